"""dvae.nn's layout: the names it has always exported still import from ``dvae.nn`` (the former private
names of the scans as aliases of the public ones), each module stays short, and nothing in the package
calls torch's private ``torch._VF``."""

import pathlib

import dvae.nn
from dvae.nn import densities, frames, recurrent, scale, scans

ROOT = pathlib.Path(dvae.nn.__file__).parents[1]  # dvae/

# every name dvae/nn/__init__.py defined before it was split into modules
FORMER_NAMES = ["MIN_SCALE", "positive", "MLP", "GaussianHead", "InitialState", "GatedTransition", "Emitter",
                "_check_frame_shape", "FrameEncoder", "ConvEmitter", "Combiner", "_CombinerScan", "_VRNNFilterScan",
                "reverse_padded", "make_rnn", "run_rnn", "_ReluRNNScan", "SequenceEncoder", "Recurrence",
                "StepPosterior"]


def test_every_former_name_still_imports_from_dvae_nn():
    missing = [n for n in FORMER_NAMES if not hasattr(dvae.nn, n)]
    assert not missing
    assert dvae.nn._CombinerScan is scans.CombinerScan
    assert dvae.nn._VRNNFilterScan is scans.VRNNFilterScan
    assert dvae.nn._ReluRNNScan is scans.ReluRNNScan
    assert dvae.nn._check_frame_shape is frames.check_frame_shape
    assert all(hasattr(dvae.nn, n) for n in dvae.nn.__all__)


def test_each_name_lives_in_the_module_of_its_job():
    assert dvae.nn.Combiner is densities.Combiner and dvae.nn.Recurrence is recurrent.Recurrence
    assert dvae.nn.ConvEmitter is frames.ConvEmitter and dvae.nn.MIN_SCALE is scale.MIN_SCALE


def test_nn_modules_are_short():
    lengths = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "nn").glob("*.py")}
    assert lengths and max(lengths.values()) <= 450, lengths


def test_no_module_of_the_package_calls_torch_vf():
    hits = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if "_VF" in p.read_text()]
    assert not hits
