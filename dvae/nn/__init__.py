"""Plain torch blocks (no Pyro): one small network per conditional density, and the recurrences.

Every density network returns the parameters of its distribution; the Pyro programs in
``dvae.models`` turn them into distributions. The modules, by job:

- :mod:`dvae.nn.densities`: MLP, GaussianHead, InitialState, GatedTransition, Emitter, Combiner,
  StepPosterior (with ``MIN_SCALE`` and ``positive`` from :mod:`dvae.nn.scale`);
- :mod:`dvae.nn.recurrent`: make_rnn, run_rnn, reverse_padded, SequenceEncoder, Recurrence;
- :mod:`dvae.nn.frames`: FrameEncoder, ConvEmitter (frames of H x W pixels);
- :mod:`dvae.nn.scans`: the hand-written backward passes CombinerScan, VRNNFilterScan, ReluRNNScan.
"""

from dvae.nn.densities import MLP, Combiner, Emitter, GatedTransition, GaussianHead, InitialState, StepPosterior
from dvae.nn.frames import ConvEmitter, FrameEncoder, check_frame_shape
from dvae.nn.recurrent import Recurrence, SequenceEncoder, make_rnn, reverse_padded, run_rnn, use_relu_scan
from dvae.nn.scale import MIN_SCALE, positive
from dvae.nn.scans import CombinerScan, ReluRNNScan, VRNNFilterScan

# the names these had when they lived in this file, kept for the code that imports them
_CombinerScan, _VRNNFilterScan, _ReluRNNScan = CombinerScan, VRNNFilterScan, ReluRNNScan
_check_frame_shape = check_frame_shape

__all__ = ["MIN_SCALE", "positive", "MLP", "GaussianHead", "InitialState", "GatedTransition", "Emitter",
           "Combiner", "StepPosterior", "FrameEncoder", "ConvEmitter", "check_frame_shape", "make_rnn", "run_rnn",
           "use_relu_scan", "reverse_padded", "SequenceEncoder", "Recurrence", "CombinerScan", "VRNNFilterScan",
           "ReluRNNScan"]
