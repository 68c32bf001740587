"""Evaluation: the per-step bounds of a model on a set of sequences, in the data's original units.

:func:`evaluate_sums` scores batches sorted by length and returns sums (of disjoint sets, they add
up: a data-parallel run all-reduces them); :func:`bounds_per_step` turns sums into the figures per
observed step, adding the log-Jacobian of the standardisation so that the bounds are in data units;
:func:`evaluate` is the two together. :func:`missing_log_det` is the log-Jacobian correction of steps
with missing (NaN) entries, which count only their observed entries' log std.
"""

from __future__ import annotations

from typing import Dict

import pyro
import torch

from dvae.data.batch import SequenceBatch
from dvae.data.batching import batch_indices, batches, sequence_lengths
from dvae.infer.elbo import elbo, elbo_terms, iw_bound


def missing_log_det(batch: SequenceBatch, log_det_per_step: float, x_log_std=None) -> torch.Tensor:
    """(B, T): what the log-Jacobian of each real step differs from ``log_det_per_step`` by when
    entries are missing: a step's is sum_d log std_d over its OBSERVED entries only. Zero without an
    ``obs_mask`` or without ``x_log_std`` (per-dimension log std; None: unstandardised data)."""
    if batch.obs_mask is None or x_log_std is None:
        return batch.x.new_zeros(batch.mask.shape)
    log_std = torch.as_tensor(x_log_std, dtype=batch.x.dtype, device=batch.x.device)  # (x_dim,)
    per_step = (batch.obs_mask.to(batch.x.dtype) * log_std).sum(-1) - log_det_per_step  # (B, T)
    return torch.where(batch.mask, per_step, per_step.new_zeros(()))


@torch.no_grad()
def evaluate_sums(model, xs, us, batch_size: int = 64, iw_samples: int = 0, num_particles: int = 1,
                  device=None, cs=None, log_det_per_step: float = 0.0, x_log_std=None,
                  vectorized: bool = False) -> Dict[str, float]:
    """The sums behind :func:`evaluate` over a set of sequences (standardised units): ``num_steps``,
    ``elbo``, ``log_lik``, ``kl``, ``iw`` (0 unless ``iw_samples``) and ``extra_log_det`` (the log-Jacobian
    difference of steps with missing entries, :func:`missing_log_det`); sums of disjoint sets add up.
    ``vectorized``: score the time-vectorized programs (the same bound, the same draws, faster)."""
    device = device or model.device
    was_training = model.training
    model.eval()
    total = {"num_steps": 0, "elbo": 0.0, "log_lik": 0.0, "kl": 0.0, "iw": 0.0, "extra_log_det": 0.0}
    program, guide = model.programs(vectorized=vectorized)
    lengths = sequence_lengths(xs)
    chunks = batch_indices(lengths, batch_size, by_length=True)  # the order batches() collates them in
    # argument validation off: the loaders checked the data once (a check per distribution is a read)
    with pyro.validation_enabled(False):
        for idx, batch in zip(chunks, batches(xs, us, batch_size, by_length=True, cs=cs)):
            total["num_steps"] += sum(lengths[i] for i in idx)  # from the host's lengths
            batch = batch.to_device(device)  # CUDA: pinned, non_blocking
            if batch.obs_mask is not None:
                total["extra_log_det"] += missing_log_det(batch, log_det_per_step, x_log_std).sum().item()
            terms = elbo_terms(program, guide, batch, num_particles)
            sums = [terms["elbo"].sum(), terms["log_lik"].sum(), terms["kl"].sum()]
            if iw_samples:
                sums.append(iw_bound(program, guide, batch, iw_samples).sum())
            sums = torch.stack([v.to(torch.float64) for v in sums]).tolist()  # the batch's one read of the device
            for key, value in zip(("elbo", "log_lik", "kl", "iw"), sums):
                total[key] += value
    model.train(was_training)
    return total


def bounds_per_step(total: Dict[str, float], num_sequences: int, log_det_per_step: float = 0.0,
                    iw_samples: int = 0) -> Dict[str, float]:
    """:func:`evaluate`'s figures from :func:`evaluate_sums`' sums."""
    num_steps = total["num_steps"]
    extra = total.get("extra_log_det", 0.0)
    log_det_per_step = log_det_per_step + (extra / num_steps if extra else 0.0)  # missing entries: smaller
    recon, kl = total["log_lik"] / num_steps, total["kl"] / num_steps  # nats per observed step
    out = {"num_sequences": num_sequences, "num_steps": num_steps,
           "neg_elbo_per_step": -elbo(recon, kl) + log_det_per_step,
           "recon_per_step": -total["log_lik"] / num_steps + log_det_per_step,
           "kl_per_step": total["kl"] / num_steps}
    if iw_samples:
        out["nll_iw_per_step"] = -total["iw"] / num_steps + log_det_per_step
    return out


def evaluate(model, xs, us, log_det_per_step: float = 0.0, batch_size: int = 64, iw_samples: int = 0,
             num_particles: int = 1, device=None, cs=None, x_log_std=None,
             vectorized: bool = False) -> Dict[str, float]:
    """Per-step bounds on a set of sequences, in the data's original units.

    ``log_det_per_step``: sum_d log std_d of the standardisation (0 for unstandardised data);
    ``x_log_std``: the per-dimension log std_d, needed where entries are missing (NaN), whose steps
    count only their observed entries' log std (:func:`missing_log_det`).
    Returns ``num_sequences``, ``num_steps`` (observed steps), ``neg_elbo_per_step``,
    ``recon_per_step`` (-E log p(x_t | z_t), data units), ``kl_per_step``, and ``nll_iw_per_step``
    when ``iw_samples`` > 0. ``cs``: per-sequence conditions (N, c_dim) of a conditional model.
    ``vectorized``: score the time-vectorized programs (the same bound and draws).
    """
    total = evaluate_sums(model, xs, us, batch_size, iw_samples, num_particles, device, cs=cs,
                          log_det_per_step=log_det_per_step, x_log_std=x_log_std, vectorized=vectorized)
    return bounds_per_step(total, len(xs), log_det_per_step, iw_samples)
