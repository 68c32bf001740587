"""The in-memory form of a sequence data set: :class:`SequenceData` and its deterministic splits.

Every loader (:mod:`dvae.data.datasets`, :mod:`dvae.data.lazy`, :mod:`dvae.data.text`) returns a
:class:`SequenceData`; this module imports none of them, so the loaders depend on it and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from dvae.errors import DataError

SPLITS = ("train", "valid", "test")


@dataclass
class SequenceData:
    """Sequences of one source with their split.

    Attributes:
        xs: observations, one (L_i, x_dim) float32 array per sequence, in file order.
        us: controls, one (L_i, u_dim) float32 array per sequence (the last row unused), or None.
        splits: split name -> list of sequence indices (positions in ``xs``).
        kind: "continuous" (Gaussian emitter, standardised), "binary" (Bernoulli emitter) or
            "categorical" (one-hot tokens, categorical emitter; see ``dvae.data.text``).
        source: the source string it was loaded from.
        meta: metadata of the file (env id, seed, ...), JSON-serialisable.
        cs: per-sequence conditions (N, c_dim) float32 (an .npz's ``cond``, or its ``labels`` one-hot), or
            None; a conditional model (``dvae train --condition``) reads them.
        vocab: categorical data: the token of each id (x_dim of them), else None.
    """

    xs: List[np.ndarray]
    us: Optional[List[np.ndarray]]
    splits: Dict[str, List[int]]
    kind: str
    source: str
    meta: dict = field(default_factory=dict)
    cs: Optional[np.ndarray] = None
    vocab: Optional[List[str]] = None

    @property
    def x_dim(self) -> int:
        return self.xs[0].shape[1]

    @property
    def u_dim(self) -> int:
        return 0 if self.us is None else self.us[0].shape[1]

    def indices(self, split: str) -> List[int]:
        if split == "all":
            return list(range(len(self.xs)))
        if split not in self.splits:
            raise DataError(f"{self.source}: unknown split {split!r} (choose from train, valid, test, all)")
        return self.splits[split]

    @property
    def c_dim(self) -> int:
        return 0 if self.cs is None else self.cs.shape[1]

    def conditions(self, split: str, c_dim: Optional[int] = None) -> Optional[np.ndarray]:
        """The conditions (n, c_dim) of one split, or None without any. ``c_dim``: the width a model
        expects; one-hot labels with fewer classes in this file are widened with zero columns."""
        if self.cs is None:
            if c_dim:
                raise DataError(f"{self.source}: the model is conditional (c_dim {c_dim}) but the file has no "
                                "'cond' or 'labels' array")
            return None
        cs = self.cs[self.indices(split)]
        if c_dim is not None and c_dim != cs.shape[1]:
            if "num_labels" in self.meta and cs.shape[1] < c_dim:
                cs = np.concatenate([cs, np.zeros((len(cs), c_dim - cs.shape[1]), np.float32)], 1)  # (n, c_dim)
            else:
                raise DataError(f"{self.source}: conditions have {self.c_dim} dims, the model expects {c_dim}")
        return cs

    def subset(self, split: str):
        """(xs, us) of one split; ``us`` is None for uncontrolled data."""
        idx = self.indices(split)
        if hasattr(self.xs, "take"):  # lazily read data (dvae.data.lazy): views, nothing read
            return self.xs.take(idx), (None if self.us is None else self.us.take(idx))
        return [self.xs[i] for i in idx], (None if self.us is None else [self.us[i] for i in idx])


def split_indices(n: int, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> Dict[str, List[int]]:
    """Deterministic split of ``n`` sequences by a seeded permutation (sorted within each split)."""
    if n < 3:  # too few to hold any out: every split sees every sequence
        return {s: list(range(n)) for s in SPLITS}
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = max(1, int(round(fractions[1] * n)))
    n_test = max(1, int(round(fractions[2] * n)))
    n_train = n - n_valid - n_test
    parts = (perm[:n_train], perm[n_train:n_train + n_valid], perm[n_train + n_valid:])
    return {s: sorted(int(i) for i in p) for s, p in zip(SPLITS, parts)}
