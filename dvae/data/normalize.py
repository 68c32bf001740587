"""Standardisation of continuous data, with the log-Jacobian that keeps bounds in original units.

If x = mean + std * y, then log p(x) = log p(y) - sum_d log std_d at every observed step, so a bound
computed on standardised data y is moved to the data's units by subtracting ``log_det_per_step``
per observed step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

STD_FLOOR = 1e-6


@dataclass
class Normalizer:
    """Per-dimension affine maps for x and u (identity where the data is not standardised)."""

    x_mean: List[float]
    x_std: List[float]
    u_mean: Optional[List[float]] = None
    u_std: Optional[List[float]] = None

    @classmethod
    def fit(cls, xs, us=None, standardize: bool = True) -> "Normalizer":
        """Statistics of the training split: ``xs`` list of (L_i, x_dim), ``us`` list of (L_i, u_dim).
        NaN entries of x (missing observations) are left out of the statistics."""
        def stats(arrs, drop_last=False):
            if hasattr(arrs, "lengths"):  # lazily read data: one streaming pass, bounded memory
                return streaming_stats(arrs, drop_last)
            if drop_last:  # the last control of each sequence is padding (unused)
                arrs = [a[:-1] for a in arrs if len(a) > 1] or arrs
            cat = np.concatenate(arrs, 0).astype(np.float64)  # (sum L_i, dim)
            if np.isnan(cat).any():  # missing entries
                empty = np.flatnonzero(np.isnan(cat).all(0))
                if empty.size:
                    raise ValueError(f"dimension {empty[0]} has no observed entry in the training split")
                return np.nanmean(cat, 0).tolist(), np.maximum(np.nanstd(cat, 0), STD_FLOOR).tolist()
            return cat.mean(0).tolist(), np.maximum(cat.std(0), STD_FLOOR).tolist()

        x_dim = xs[0].shape[1]
        x_mean, x_std = stats(xs) if standardize else ([0.0] * x_dim, [1.0] * x_dim)
        u_mean = u_std = None
        if us is not None:
            u_mean, u_std = stats(us, drop_last=True)
        return cls(x_mean, x_std, u_mean, u_std)

    @property
    def log_std(self) -> List[float]:
        """log std_d per dimension: with missing entries, the log-Jacobian of a step sums it over the
        observed entries only."""
        return np.log(self.x_std).tolist()

    @property
    def log_det_per_step(self) -> float:
        """sum_d log std_d: added to a per-step NLL of standardised data gives the NLL in data units."""
        return float(np.sum(np.log(self.x_std)))

    def x(self, xs):
        m, s = np.float32(self.x_mean), np.float32(self.x_std)
        if hasattr(xs, "map"):  # lazily read data: standardised when read
            return xs.map(lambda x: ((x - m) / s).astype(np.float32))
        return [((x - m) / s).astype(np.float32) for x in xs]

    def u(self, us):
        if us is None or self.u_mean is None:
            return us
        m, s = np.float32(self.u_mean), np.float32(self.u_std)
        if hasattr(us, "map"):
            return us.map(lambda u: ((u - m) / s).astype(np.float32))
        return [((u - m) / s).astype(np.float32) for u in us]

    def x_inverse(self, y):
        """Map standardised values (numpy or torch, last dim x_dim) back to data units."""
        if torch.is_tensor(y):
            m = torch.tensor(self.x_mean, dtype=y.dtype, device=y.device)
            s = torch.tensor(self.x_std, dtype=y.dtype, device=y.device)
            return y * s + m
        return np.asarray(y) * np.float32(self.x_std) + np.float32(self.x_mean)


def streaming_stats(arrs, drop_last: bool = False):
    """Per-dimension mean and std (floored at STD_FLOOR) of sequences read one at a time (lists of
    floats), as :meth:`Normalizer.fit` computes them on the concatenation; ``drop_last`` leaves out
    each sequence's last row where it has more than one (as fit does). Chan et al.'s pairwise update
    of (count, mean, sum of squared deviations), in float64."""
    lengths = np.asarray(arrs.lengths)
    drop = drop_last and bool((lengths > 1).any())
    n, mean, m2 = 0, None, None
    for k in range(len(arrs)):
        if drop and lengths[k] <= 1:
            continue
        a = np.asarray(arrs[k], np.float64)
        a = a[:-1] if drop else a  # (L, dim)
        if len(a) == 0:
            continue
        a_mean = a.mean(0)
        a_m2 = ((a - a_mean) ** 2).sum(0)
        if mean is None:
            n, mean, m2 = len(a), a_mean, a_m2
            continue
        total = n + len(a)
        delta = a_mean - mean
        mean = mean + delta * (len(a) / total)
        m2 = m2 + a_m2 + delta ** 2 * (n * len(a) / total)
        n = total
    std = np.sqrt(m2 / n)
    return mean.tolist(), np.maximum(std, STD_FLOOR).tolist()
