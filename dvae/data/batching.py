"""Batching: which sequences go together in a batch, in which order, and their collation.

Training draws shuffled batches (with ``by_length``: length buckets of similar lengths, less padding,
in a shuffled order); evaluation takes batches sorted by length. :func:`batch_indices` is the order,
:func:`batches` collates it into padded :class:`~dvae.data.batch.SequenceBatch` objects.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch

from dvae.data.batch import SequenceBatch, collate


def sequence_lengths(xs) -> List[int]:
    """The number of steps of each sequence; read from the container's ``lengths`` where it has them
    (lazily read data: no sequence is loaded), else ``len`` of each."""
    lengths = getattr(xs, "lengths", None)
    return [len(x) for x in xs] if lengths is None else [int(n) for n in lengths]


def batch_indices(lengths: Sequence[int], batch_size: int, generator: Optional[torch.Generator] = None,
                  by_length: bool = False) -> List[List[int]]:
    """The sequence indices of each batch, in the order :func:`batches` collates them: shuffled by
    ``generator`` (with ``by_length`` too: length buckets in a shuffled order, ties broken at random),
    or sorted by length (``by_length``, less padding; for evaluation), or in order."""
    n = len(lengths)
    if generator is not None and by_length:
        perm = torch.randperm(n, generator=generator).tolist()
        order = sorted(perm, key=lambda i: lengths[i])  # stable: random order within equal lengths
        chunks = [order[s:s + batch_size] for s in range(0, n, batch_size)]
        order = [i for c in torch.randperm(len(chunks), generator=generator).tolist() for i in chunks[c]]
    elif generator is not None:
        order = torch.randperm(n, generator=generator).tolist()
    elif by_length:
        order = sorted(range(n), key=lambda i: lengths[i])
    else:
        order = list(range(n))
    return [order[start:start + batch_size] for start in range(0, n, batch_size)]


def batches(xs: Sequence[np.ndarray], us: Optional[Sequence[np.ndarray]], batch_size: int,
            generator: Optional[torch.Generator] = None, by_length: bool = False,
            cs: Optional[np.ndarray] = None) -> Iterator[SequenceBatch]:
    """Collate sequences into SequenceBatches, in the order of :func:`batch_indices`.
    ``cs``: per-sequence conditions (N, c_dim) or None."""
    for idx in batch_indices(sequence_lengths(xs), batch_size, generator, by_length):
        x = [xs[i] for i in idx]
        yield collate([torch.from_numpy(xi) for xi in x],
                      None if us is None else [torch.from_numpy(us[i]) for i in idx],
                      None if cs is None else [torch.as_tensor(cs[i]) for i in idx],
                      missing=any(np.isnan(xi).any() for xi in x))  # looked up in numpy: no tensor read
