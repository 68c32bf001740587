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
from torch.distributions import Normal
from torch.distributions.kl import _kl_normal_normal

from dvae.data.batch import SequenceBatch
from dvae.models.base import observation_dist


def _kl(mq, sq, mp, sp) -> torch.Tensor:
    """KL(N(mq, sq) || N(mp, sp)) summed over the last dim."""
    return _kl_normal_normal(Normal(mq, sq, validate_args=False), Normal(mp, sp, validate_args=False)).sum(-1)


def _log_lik(params, likelihood: str, x: torch.Tensor, mask: torch.Tensor, obs_mask=None) -> torch.Tensor:
    """sum over real steps of log p(x_t | .) of the observed entries: params (B, T, .), x (B, T, x_dim),
    mask (B, T), obs_mask (B, T, x_dim) or None."""
    lp = observation_dist(params, likelihood, obs_mask).log_prob(x)  # (B, T)
    return torch.where(mask, lp, lp.new_zeros(())).sum()


def _path_kl(mq, sq, mp, sp, mask) -> torch.Tensor:
    kl = _kl(mq, sq, mp, sp)  # (B, T)
    return torch.where(mask, kl, kl.new_zeros(())).sum()


def direct_loss(model, batch: SequenceBatch, annealing_factor: float = 1.0) -> torch.Tensor:
    """-ELBO of the batch (a scalar tensor to backpropagate), the KL scaled by ``annealing_factor``."""
    lik = model.config.likelihood
    if model.name == "dmm" and len(model.iafs):  # the flow guide: the one-draw KL log q(z_t) - log p(z_t)
        q = model.flow_path(batch)
        z = q.path  # (B, T, z_dim)
        prior_loc, prior_scale = model._prior_params(z, batch)
        log_q = Normal(q.loc, q.scale).log_prob(q.base).sum(-1) - q.log_det  # (B, T)
        log_p = Normal(prior_loc, prior_scale).log_prob(z).sum(-1)
        kl = torch.where(batch.mask, log_q - log_p, log_q.new_zeros(())).sum()
        log_lik = _log_lik(model.emitter(z), lik, batch.x, batch.mask, batch.obs_mask)
    elif model.name == "dmm":
        loc, scale, z = model.guide_path(batch)  # (B, T, z_dim) each
        prior_loc, prior_scale = model._prior_params(z, batch)
        kl = _path_kl(loc, scale, prior_loc, prior_scale, batch.mask)
        log_lik = _log_lik(model.emitter(z), lik, batch.x, batch.mask, batch.obs_mask)
    elif model.name == "vrnn":
        loc, scale, z, (phi_z, h_prev) = model.guide_path(batch, features=True)  # h along the drawn path
        prior_loc, prior_scale = model.prior(h_prev)
        kl = _path_kl(loc, scale, prior_loc, prior_scale, batch.mask)
        log_lik = _log_lik(model.emitter(torch.cat([phi_z, h_prev], -1)), lik, batch.x, batch.mask, batch.obs_mask)
    elif model.name == "vrae":
        loc, scale = model.posterior_params(batch)  # (B, z_dim)
        z = loc + torch.empty_like(loc).normal_() * scale
        kl = _kl(loc, scale, torch.zeros_like(loc), torch.ones_like(scale)).sum()
        s = model._decode(z, model._shifted_controls(batch), model._c(batch))  # (B, T, rnn_dim)
        log_lik = _log_lik(model.emitter(s), lik, batch.x, batch.mask, batch.obs_mask)
    elif model.name == "vae":
        loc, scale, z = model.guide_path(batch)  # (B, T, z_dim) each
        kl = _path_kl(loc, scale, torch.zeros_like(loc), torch.ones_like(scale), batch.mask)
        log_lik = _log_lik(model.emitter(z), lik, batch.x, batch.mask, batch.obs_mask)
    else:
        raise ValueError(f"no direct loss for model {model.name!r}")
    return -(log_lik - annealing_factor * kl)
