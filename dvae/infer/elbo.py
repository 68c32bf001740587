"""The factorized dynamical ELBO, KL annealing and free bits, and importance-weighted bounds.

    ELBO = sum_t E_q[log p(x_t | z_t)] - sum_t E_q[KL(q(z_t | z_{t-1}, .) || p(z_t | z_{t-1}, u_{t-1}))]

Each per-step KL is computed in closed form given the sampled z_{t-1}: this is what Pyro's
``TraceMeanField_ELBO`` does for per-step Normal sites (the model and guide here satisfy its
condition: the guide's z_t depends on no later latent, so the model's parents of z_t are never
descendants of z_t in the guide). :class:`DynamicalELBO` is that estimator plus free bits.
KL annealing is ``poutine.scale`` on the latent sites (the ``annealing_factor`` of every model).
"""

from __future__ import annotations

import math
from typing import Callable, Dict

import torch
from pyro import poutine
from pyro.distributions import MaskedDistribution
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import kl_divergence

from dvae.models.base import repeat_batch


def _site_kl(guide_site, model_site) -> torch.Tensor:
    """KL(q || p) of one latent site, masked, unscaled: batch-shaped (B,)."""
    kl = kl_divergence(guide_site["fn"], model_site["fn"])
    return scale_and_mask(kl, mask=guide_site["mask"])


def _num_real(site, kl: torch.Tensor) -> torch.Tensor:
    """How many batch entries of a site are real (not masked out), from ``.mask(...)`` or poutine.mask."""
    mask = torch.ones_like(kl, dtype=torch.bool)
    fn = site["fn"]
    while hasattr(fn, "base_dist"):  # Masked / Expanded / Independent wrappers
        if isinstance(fn, MaskedDistribution) and torch.is_tensor(fn._mask):
            mask = mask & fn._mask
        fn = fn.base_dist
    if torch.is_tensor(site["mask"]):
        mask = mask & site["mask"]
    return mask.sum()


class DynamicalELBO(TraceMeanField_ELBO):
    """TraceMeanField_ELBO (analytic per-step KL given the sampled past) with optional free bits.

    Free bits (Kingma et al. 2016): a latent site's KL, summed over the batch, is counted as at least
    ``free_bits`` nats per latent dimension per real sequence, so the optimiser gains nothing by pushing
    it lower. With ``free_bits=0`` this is exactly ``TraceMeanField_ELBO``.
    """

    def __init__(self, num_particles: int = 1, free_bits: float = 0.0, **kwargs):
        super().__init__(num_particles=num_particles, **kwargs)
        self.free_bits = free_bits

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        if self.free_bits <= 0:
            return super()._differentiable_loss_particle(model_trace, guide_trace)
        elbo = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            kl = _site_kl(guide_site, model_site)  # (B,)
            n_real = _num_real(guide_site, kl)
            floor = self.free_bits * guide_site["fn"].event_shape.numel() * n_real
            elbo = elbo - guide_site["scale"] * torch.maximum(kl.sum(), floor)
        loss = -elbo
        return loss.detach().item(), loss


def _sample_sites(trace):
    """Latent and observed sample sites (plates' subsample sites excluded)."""
    return [(n, s) for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)]


def _traces(model: Callable, guide: Callable, batch):
    guide_trace = poutine.trace(guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return model_trace, guide_trace


@torch.no_grad()
def elbo_terms(model: Callable, guide: Callable, batch, num_particles: int = 1) -> Dict[str, torch.Tensor]:
    """Per-sequence and per-step terms of the dynamical ELBO (the estimator of DynamicalELBO, free
    bits and annealing off), averaged over ``num_particles`` draws (vectorised by repeating the batch).

    Returns ``log_lik`` (B, T): log p(x_t | z_t) (zero on padding); ``kl`` (B, T): the per-step KL
    (the VRAE's single KL is put at step 0); ``elbo`` (B,): their sums, log_lik - kl.
    """
    B, T = batch.batch_size, batch.num_steps
    model_trace, guide_trace = _traces(model, guide, repeat_batch(batch, num_particles))
    log_lik = batch.x.new_zeros(num_particles * B, T)  # (S*B, T)
    kl = batch.x.new_zeros(num_particles * B, T)
    for name, site in _sample_sites(model_trace):
        t = int(name.split("_")[1]) if "_" in name else 0
        if site["is_observed"]:
            log_lik[:, t] += site["log_prob"]
        else:
            kl[:, t] += _site_kl(guide_trace.nodes[name], site)
    log_lik = log_lik.reshape(num_particles, B, T).mean(0)
    kl = kl.reshape(num_particles, B, T).mean(0)
    return {"log_lik": log_lik, "kl": kl, "elbo": log_lik.sum(1) - kl.sum(1)}


@torch.no_grad()
def iw_bound(model: Callable, guide: Callable, batch, num_samples: int, chunk: int = 64) -> torch.Tensor:
    """The K-sample importance-weighted bound log (1/K) sum_k p(x, z_k) / q(z_k | x), per sequence (B,).

    Draws are vectorised ``chunk`` at a time by repeating the batch.
    """
    B = batch.batch_size
    log_ws = []
    done = 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        model_trace, guide_trace = _traces(model, guide, repeat_batch(batch, k))
        log_w = batch.x.new_zeros(k * B)  # (k*B,)
        for _, site in _sample_sites(model_trace):
            log_w += site["log_prob"]
        for _, site in _sample_sites(guide_trace):
            log_w -= site["log_prob"]
        log_ws.append(log_w.reshape(k, B))
        done += k
    log_w = torch.cat(log_ws, 0)  # (K, B)
    return torch.logsumexp(log_w, 0) - math.log(num_samples)
