"""Anomaly scores: per-sequence and per-step negative ELBO (and IW bound), in the data's units."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch

from dvae.data.batch import collate
from dvae.infer.elbo import elbo_terms, iw_bound
from dvae.infer.evaluation import missing_log_det


@torch.no_grad()
def sequence_scores(model, xs, us, log_det_per_step: float = 0.0, iw_samples: int = 0,
                    batch_size: int = 64, num_particles: int = 1, cs=None, x_log_std=None) -> List[Dict]:
    """For each sequence i (in the given order): ``neg_elbo`` (nats, whole sequence), ``neg_elbo_per_step``,
    ``per_step`` (list: -log p(x_t | z_t) + KL_t, data units) and, with ``iw_samples``, ``nll_iw``.
    ``x_log_std``: per-dimension log std, for the log-Jacobian of steps with missing (NaN) entries."""
    was_training = model.training
    model.eval()
    out: List[Dict] = [None] * len(xs)
    order = sorted(range(len(xs)), key=lambda i: len(xs[i]))  # less padding
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([torch.from_numpy(xs[i]) for i in idx],
                        None if us is None else [torch.from_numpy(us[i]) for i in idx],
                        None if cs is None else [torch.as_tensor(cs[i]) for i in idx]).to(model.device)
        terms = elbo_terms(model.model, model.guide, batch, num_particles)
        extra = missing_log_det(batch, log_det_per_step, x_log_std)  # (b, T): zero unless entries are missing
        per_step = (terms["kl"] - terms["log_lik"] + log_det_per_step + extra).cpu().numpy()  # (b, T)
        extra = extra.cpu().numpy()
        iw = iw_bound(model.model, model.guide, batch, iw_samples).cpu().numpy() if iw_samples else None
        for j, i in enumerate(idx):
            L = len(xs[i])
            steps = per_step[j, :L]
            out[i] = {"neg_elbo": float(steps.sum()), "neg_elbo_per_step": float(steps.mean()),
                      "per_step": [float(v) for v in steps]}
            if iw is not None:
                out[i]["nll_iw"] = float(-iw[j] + L * log_det_per_step + extra[j, :L].sum())
    model.train(was_training)
    return out


def threshold_from(scores: List[Dict], quantile: float = 0.99, key: str = "neg_elbo_per_step") -> float:
    """The ``quantile`` of a score over reference (validation) sequences."""
    return float(np.quantile([s[key] for s in scores], quantile))
