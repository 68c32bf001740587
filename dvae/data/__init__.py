"""Data: SequenceData and its splits, SequenceBatch, collation, loaders, normalisation.

The data layer reads files; it collects from no environment. The built-in ``pendulum`` source lives
with collection, in :mod:`envs.sources` (its ``load_source`` resolves built-in names too).
"""

from dvae.data.batch import SequenceBatch, collate
from dvae.data.datasets import from_trajectories, load_npz, load_polyphonic, load_source
from dvae.data.normalize import Normalizer
from dvae.data.safe_pickle import safe_load
from dvae.data.sequences import SequenceData, split_indices

__all__ = ["SequenceBatch", "collate", "SequenceData", "from_trajectories", "load_npz", "load_polyphonic",
           "load_source", "split_indices", "Normalizer", "safe_load"]
