"""Data: SequenceData and its splits, SequenceBatch, collation, loaders, normalisation.

The data layer reads files; it collects from no environment. The built-in sources (``pendulum``) are
listed in :mod:`dvae.data.sources`, each by the entry point of its loader, which lives with collection
(:mod:`envs.sources`) and is imported only when the source is loaded.
"""

from dvae.data.batch import SequenceBatch, collate
from dvae.data.datasets import from_trajectories, load_npz, load_polyphonic, load_source
from dvae.data.normalize import Normalizer
from dvae.data.safe_pickle import safe_load
from dvae.data.sequences import SequenceData, split_indices

__all__ = ["SequenceBatch", "collate", "SequenceData", "from_trajectories", "load_npz", "load_polyphonic",
           "load_source", "split_indices", "Normalizer", "safe_load"]
