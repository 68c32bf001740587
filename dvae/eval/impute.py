"""Imputation of missing entries (NaN) in data units: a model's posterior predictive, and linear
interpolation as the baseline.

Works on the common model interface (``model.impute``), so it imports no model family.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch

from dvae.data.batch import collate


@torch.no_grad()
def impute_sequences(model, normalizer, xs: List[np.ndarray], us: Optional[List[np.ndarray]],
                     num_samples: int = 100, batch_size: int = 64) -> List[Dict[str, np.ndarray]]:
    """Fill the NaN entries of each sequence ``xs[i]`` (L_i, x_dim), data units, from the model's
    posterior predictive given its observed entries. Returns per sequence, in data units, ``mean``,
    ``lo``, ``hi`` (the 90% band) and ``x`` (observed entries kept, missing ones = ``mean``), each
    (L_i, x_dim) float32."""
    was_training = model.training
    model.eval()
    xs_std, us_std = normalizer.x(xs), normalizer.u(us)
    out: List[Dict[str, np.ndarray]] = [None] * len(xs)
    order = sorted(range(len(xs)), key=lambda i: len(xs[i]))  # less padding
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([torch.from_numpy(xs_std[i]) for i in idx],
                        None if us_std is None else [torch.from_numpy(us_std[i]) for i in idx]).to(model.device)
        res = model.impute(batch, num_samples)
        res = {k: normalizer.x_inverse(v).cpu().numpy() for k, v in res.items() if k != "x"}  # (b, T, x_dim)
        for j, i in enumerate(idx):
            L = len(xs[i])
            one = {k: v[j, :L].astype(np.float32) for k, v in res.items()}
            one["x"] = np.where(np.isnan(xs[i]), one["mean"], xs[i]).astype(np.float32)
            out[i] = one
    model.train(was_training)
    return out


def linear_interpolation(x: np.ndarray, fill: Optional[np.ndarray] = None) -> np.ndarray:
    """Fill the NaN entries of ``x`` (L, x_dim) by linear interpolation in time between the nearest
    observed entries of the same dimension (held constant before the first and after the last);
    a dimension with no observed entry gets ``fill`` (x_dim,) (default 0)."""
    x = np.array(x, dtype=np.float64)
    t = np.arange(len(x))
    for d in range(x.shape[1]):
        seen = ~np.isnan(x[:, d])
        if seen.any():
            x[~seen, d] = np.interp(t[~seen], t[seen], x[seen, d])
        else:
            x[:, d] = 0.0 if fill is None else fill[d]
    return x


def rmse_on(mask_list: List[np.ndarray], truth: List[np.ndarray], estimate: List[np.ndarray]) -> float:
    """Root mean square error over the entries where ``mask_list[i]`` is true, pooled over sequences."""
    sq = np.concatenate([((e - t)[m]) ** 2 for m, t, e in zip(mask_list, truth, estimate)])
    return float(np.sqrt(sq.mean()))
