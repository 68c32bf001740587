"""The dynamical ELBO of each model written directly in torch, without Pyro.

``direct_loss(model, batch, annealing_factor)`` is -ELBO summed over the batch, with the same networks,
the same estimator (closed-form per-step KL given the drawn path, or for the DMM's flow guide the one-draw
log q(z_t) - log p(z_t); padded steps masked out) and the same
random draws, in the same order, as ``DynamicalELBO`` on either form of the Pyro program. It is the
reference the time-vectorized programs are tested and benchmarked against (``bench/bench_training.py``):
what remains between the two is Pyro's own cost.
"""

from __future__ import annotations

import torch
from torch.distributions import kl_divergence

from dvae.data.batch import SequenceBatch
from dvae.models.paths import FlowPath, sampled_steps_kl


def direct_loss(model, batch: SequenceBatch, annealing_factor: float = 1.0) -> torch.Tensor:
    """-ELBO of the batch (a scalar tensor to backpropagate), the KL scaled by ``annealing_factor``.

    Written over the model's path densities (``posterior_path``, ``prior_path``, ``emission_path``):
    the guide's draw, the KL of every step against the prior along it (closed form; for a flow guide
    the one-draw log q(z_t) - log p(z_t)), and the observations' log density along it, padded steps
    and missing entries left out."""
    q = model.posterior_path(batch)  # the guide's draw: a path distribution, or one code per sequence
    z = q.rsample()  # (B, T, z_dim), or (B, z_dim)
    prior = model.prior_path(batch)
    kl = sampled_steps_kl(q, prior).sum(-1) if isinstance(q, FlowPath) else kl_divergence(q, prior)  # (B,)
    lp = model.emission_path(batch, z).log_prob(batch.x)  # (B, T)
    log_lik = torch.where(batch.mask, lp, lp.new_zeros(())).sum()
    return -(log_lik - annealing_factor * kl.sum())
