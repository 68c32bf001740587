"""Data: SequenceBatch, collation, loaders, normalisation and splits."""

from dvae.data.batch import SequenceBatch, collate
from dvae.data.datasets import (SequenceData, from_trajectories, load_npz, load_pendulum, load_polyphonic,
                                load_source, split_indices)
from dvae.data.normalize import Normalizer
from dvae.data.safe_pickle import safe_load

__all__ = ["SequenceBatch", "collate", "SequenceData", "from_trajectories", "load_npz", "load_pendulum",
           "load_polyphonic", "load_source", "split_indices", "Normalizer", "safe_load"]
