"""The factorized dynamical ELBO, KL annealing and free bits, and importance-weighted bounds.

    ELBO = sum_t E_q[log p(x_t | z_t)] - sum_t E_q[KL(q(z_t | z_{t-1}, .) || p(z_t | z_{t-1}, u_{t-1}))]

Each per-step KL is computed in closed form given the sampled z_{t-1}: this is what Pyro's
``TraceMeanField_ELBO`` does for per-step Normal sites (the model and guide here satisfy its
condition: the guide's z_t depends on no later latent, so the model's parents of z_t are never
descendants of z_t in the guide). :class:`DynamicalELBO` is that estimator plus free bits, written
once for both forms of every program:

- per-step programs (``model``/``guide``): one latent site per step, whose KL is one column;
- time-vectorized programs (``model_vectorized``/``guide_vectorized``): the path is one site whose
  distributions (``dvae.models.paths``) give the per-step KL of every step at once, (B, T) columns.

:func:`site_kl_steps` turns a latent site of either kind into KL columns (batch entries x steps), and
everything else (scaling, annealing, free bits per step, ``elbo_terms``) works on those columns.
KL annealing is ``poutine.scale`` on the latent sites (the ``annealing_factor`` of every model); the
beta weight of a beta-VAE (Higgins et al. 2017) is ``DynamicalELBO(beta=...)``. The two multiply, and
free bits floor each step's KL before either weight applies:

    objective = sum_t log p(x_t | z_t) - beta * annealing * sum_t max(KL_t, free_bits * z_dim)

:func:`elbo` is the same arithmetic on two numbers (a reconstruction log-likelihood and a KL).

Usage, for either form::

    model, guide = dvae_model.programs(vectorized=True)   # or (dvae_model.model, dvae_model.guide)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), DynamicalELBO(free_bits=0.0))
    svi.step(batch, annealing_factor)
"""

from __future__ import annotations

import math
from typing import Callable, Dict, NamedTuple

import torch
from pyro import poutine
from pyro.distributions import MaskedDistribution
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.trace_mean_field_elbo import _check_mean_field_requirement
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape, warn_if_nan
from torch.distributions import kl_divergence

from dvae.models.base import repeat_batch
from dvae.models.paths import GuidePath, as_path, observed_step_log_prob, sampled_steps_kl, steps_kl


def elbo(recon: float, kl: float, beta: float = 1.0) -> float:
    """The evidence lower bound from its two terms: ``recon - beta * kl``.

    ``recon``: the reconstruction log-likelihood E_q[log p(x | z)] (nats, higher is better); ``kl``:
    KL(q(z | x) || p(z)) (nats, >= 0); ``beta``: the weight on the KL (1: the ELBO itself, a lower bound
    on log p(x); other values give the beta-VAE objective, which is not a bound). Per sequence, per
    step or summed: the three numbers only need the same unit.
    """
    recon, kl, beta = float(recon), float(kl), float(beta)
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    return recon - beta * kl


class SiteKL(NamedTuple):
    """The KL of one latent site, as columns: ``kl`` (B, S) masked and unscaled, ``real`` (B, S) bool
    (which entries are real), ``dims`` latent dimensions per column, ``steps`` whether the S columns are
    the steps 0 .. T-1 of a path site (else S = 1: the site's own step), ``analytic`` whether it is in
    closed form (else the one-draw estimate log q(z) - log p(z))."""

    kl: torch.Tensor
    real: torch.Tensor
    dims: int
    steps: bool
    analytic: bool


def site_mask(site, like: torch.Tensor) -> torch.Tensor:
    """The batch mask of a per-step site (B,): ``.mask(...)`` wrappers and poutine.mask."""
    mask = torch.ones_like(like, dtype=torch.bool)
    fn = site["fn"]
    while hasattr(fn, "base_dist"):  # Masked / Expanded / Independent wrappers
        if isinstance(fn, MaskedDistribution) and torch.is_tensor(fn._mask):
            mask = mask & fn._mask
        fn = fn.base_dist
    if torch.is_tensor(site["mask"]):
        mask = mask & site["mask"]
    return mask


def with_batch_mask(mask, extra):
    """``mask`` (a bool tensor) and ``extra``, a site's mask as Pyro holds it (None or True: no mask;
    a bool tensor; a Python bool)."""
    if extra is None or extra is True:
        return mask
    return mask & (extra if torch.is_tensor(extra) else torch.tensor(bool(extra)))


def site_kl_steps(guide_site, model_site) -> SiteKL:
    """KL(q || p) of one latent site in columns: a path site gives every step's closed-form KL given the
    drawn path (B, T) (a flow path, :class:`~dvae.models.paths.FlowPath`: every step's one-draw estimate
    log q(z_t) - log p(z_t), flagged ``analytic=False``); a per-step site its closed-form KL (B, 1); a
    site with no closed form (a flow step) the one-draw estimate log q(z) - log p(z) (B, 1), flagged
    ``analytic=False``."""
    q_fn, p_fn = guide_site["fn"], model_site["fn"]
    q, q_mask = as_path(q_fn)
    p, p_mask = as_path(p_fn)
    if q is not None and p is not None:
        extra = torch.ones(q.batch_shape, dtype=torch.bool, device=q.loc.device)  # (B,): .mask(...) and poutine.mask
        for m in (q_mask, p_mask, guide_site["mask"]):
            extra = with_batch_mask(extra, m)
        analytic = isinstance(q, GuidePath)  # a flow path (FlowPath): no closed form, the one-draw estimate
        kl = steps_kl(q, p) if analytic else sampled_steps_kl(q, p)  # (B, T), zero on padded steps
        real = extra[..., None] if q.mask is None else q.mask & extra[..., None]
        kl = torch.where(extra[..., None], kl, kl.new_zeros(()))
        return SiteKL(kl, real.expand_as(kl), q.event_shape[-1], True, analytic)
    try:
        kl = kl_divergence(q_fn, p_fn)  # batch shape, masked by the sites' .mask(...)
        analytic = True
    except NotImplementedError:  # sampled, as TraceMeanField_ELBO falls back
        value = guide_site["value"]
        kl = q_fn.log_prob(value) - p_fn.log_prob(value)
        analytic = False
    if not torch.is_tensor(kl):  # a KL masked out entirely comes back as the number 0
        kl = torch.zeros(q_fn.batch_shape, device=guide_site["value"].device)
    kl = scale_and_mask(kl, mask=guide_site["mask"])
    real = site_mask(guide_site, kl)
    return SiteKL(kl[..., None], real[..., None], q_fn.event_shape.numel(), False, analytic)


class DynamicalELBO(TraceMeanField_ELBO):
    """The factorized dynamical ELBO (analytic per-step KL given the sampled past) with optional free
    bits and a beta weight on the KL, for per-step and time-vectorized programs alike.

    Free bits (Kingma et al. 2016): each step's KL of a latent site, summed over the batch, is counted as
    at least ``free_bits`` nats per latent dimension per real sequence, so the optimiser gains nothing by
    pushing it lower. With ``free_bits=0`` and ``beta=1`` this is ``TraceMeanField_ELBO`` (same value
    and gradients on per-step programs; on vectorized ones, the same as on the per-step form of the same
    program). ``beta`` multiplies every latent site's (floored) KL, on top of any ``poutine.scale``
    (annealing) on the site.

    After each evaluation, :attr:`last_terms` holds the plain terms of the last batch, averaged over
    particles: ``{"log_lik": sum of log p(x_t | z_t), "kl": sum of the KL}`` (floats, nats summed over
    the batch, before any scale, annealing, beta or free bits), for logging; :attr:`last_term_tensors`
    holds the same as detached 0-dim tensors on the model's device (reading them as floats is what
    synchronises the host with the device: :attr:`last_terms` does it when read, not at every update).

    :meth:`loss_and_grads` returns the loss as a detached 0-dim tensor (no host-device
    synchronisation; ``float()`` it to read it) and, unlike Pyro's, does not check it for NaN (the
    trainer's :class:`~dvae.infer.svi.ClippedSVI` skips non-finite updates).

    It computes only what the estimator uses: log densities of the observed sites, and the KL columns
    of the latent ones (no log densities of latent sites unless a KL has no closed form).
    """

    def __init__(self, num_particles: int = 1, free_bits: float = 0.0, beta: float = 1.0, **kwargs):
        super().__init__(num_particles=num_particles, **kwargs)
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        self.free_bits = free_bits
        self.beta = beta
        self._particle_terms = []
        self.last_term_tensors: Dict[str, torch.Tensor] = {}

    @property
    def last_terms(self) -> Dict[str, float]:
        return {key: float(value) for key, value in self.last_term_tensors.items()}

    def _get_traces(self, model, guide, args, kwargs):
        self._particle_terms = []
        yield from super()._get_traces(model, guide, args, kwargs)
        n = len(self._particle_terms)
        self.last_term_tensors = {key: sum(p[i] for p in self._particle_terms) / n if n else torch.tensor(math.nan)
                                  for i, key in enumerate(("log_lik", "kl"))}

    def loss_and_grads(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Backpropagate the ELBO's gradient (as Pyro's ``Trace_ELBO.loss_and_grads``); returns the loss
        as a detached 0-dim tensor, read nowhere here (no host-device synchronisation)."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle = self._particle_loss(model_trace, guide_trace)
            loss = loss + particle.detach() / self.num_particles
            trainable = any(site["type"] == "param" for trace in (model_trace, guide_trace)
                            for site in trace.nodes.values())
            if trainable and particle.requires_grad:
                (particle / self.num_particles).backward(retain_graph=self.retain_graph)
        return torch.as_tensor(loss)

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace), graph_type="flat").get_trace(
            *args, **kwargs)
        validate = is_validation_enabled()
        if validate:
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
            check_if_enumerated(guide_trace)
            _check_mean_field_requirement(model_trace, guide_trace)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob(site_filter=lambda name, site: site["is_observed"])
        if validate:
            for site in model_trace.nodes.values():
                if site["type"] == "sample" and site["is_observed"]:
                    check_site_shape(site, self.max_plate_nesting)
        return model_trace, guide_trace

    def kl_columns(self, sites: Dict[str, SiteKL]) -> Dict[str, torch.Tensor]:
        """Each latent site's KL columns summed over the batch (S,), each at least ``free_bits`` nats per
        latent dimension per real sequence. (A data-parallel ELBO sums the columns across processes
        before the free-bits floor: ``dvae.infer.distributed.DataParallelELBO``.)"""
        out = {}
        for name, site in sites.items():
            kl = site.kl.reshape(-1, site.kl.shape[-1]).sum(0)  # (S,): each column summed over the batch
            if self.free_bits > 0:
                n_real = site.real.reshape(-1, site.real.shape[-1]).sum(0)  # (S,)
                kl = torch.maximum(kl, self.free_bits * site.dims * n_real)
            out[name] = kl
        return out

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The -ELBO estimate to differentiate, a 0-dim tensor on the device, read nowhere here (Pyro's
        reads it twice, and checks it for NaN: host-device synchronisations). Every latent site is
        reparameterized, so the estimate is its own surrogate: the same value and gradient as Pyro's."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss + self._particle_loss(model_trace, guide_trace) / self.num_particles
        return torch.as_tensor(loss)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        loss = self._particle_loss(model_trace, guide_trace)
        # the loss as a plain number beside the differentiable surrogate: Trace_ELBO.differentiable_loss
        # returns loss + (surrogate - surrogate.item()), which would double the gradient of a tensor loss
        return torch_item(loss), loss

    def _particle_loss(self, model_trace, guide_trace) -> torch.Tensor:
        """-ELBO of one particle (a tensor to backpropagate); books the particle's plain terms."""
        sites = {}
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] == "sample" and not model_site["is_observed"]:
                guide_site = guide_trace.nodes[name]
                if not guide_site["fn"].has_rsample:
                    raise NotImplementedError(f"DynamicalELBO needs reparameterized latent sites; {name!r} is not")
                sites[name] = site_kl_steps(guide_site, model_site)
        kls = self.kl_columns(sites)
        elbo = 0.0
        plain_log_lik, plain_kl = 0.0, 0.0  # the unweighted terms, for last_terms
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                plain_log_lik = plain_log_lik + scale_and_mask(model_site["unscaled_log_prob"],
                                                               mask=model_site["mask"]).sum().detach()
                continue
            plain_kl = plain_kl + sites[name].kl.sum().detach()  # masked, unfloored, this process's share
            elbo = elbo - self.beta * guide_trace.nodes[name]["scale"] * kls[name].sum()
        for name, guide_site in guide_trace.nodes.items():  # auxiliary guide sites, as TraceMeanField_ELBO
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                assert guide_site["infer"].get("is_auxiliary")
                log_q = guide_site["fn"].log_prob(guide_site["value"])
                elbo = elbo - scale_and_mask(log_q, guide_site["scale"], guide_site["mask"]).sum()
        self._particle_terms.append([torch.as_tensor(plain_log_lik), torch.as_tensor(plain_kl)])  # on the device
        return torch.as_tensor(-elbo)

    def loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        with torch.no_grad():
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                loss = loss + self._differentiable_loss_particle(model_trace, guide_trace)[0] / self.num_particles
        warn_if_nan(loss, "loss")
        return loss


def _sample_sites(trace):
    """Latent and observed sample sites (plates' subsample sites excluded)."""
    return [(n, s) for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)]


def _traces(model: Callable, guide: Callable, batch):
    """The guide's and the replayed model's traces, with the log densities :func:`elbo_terms` reads: not
    those of a vectorized program's observation site, whose per-step terms it takes from the site's
    distribution instead (:func:`~dvae.models.paths.observed_step_log_prob`: for the LGSSM the
    step-by-step filter, so its GaussianHMM score is not computed as well)."""
    guide_trace = poutine.trace(guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
    model_trace.compute_log_prob(site_filter=lambda name, site: not _path_observation(site))
    guide_trace.compute_log_prob()
    return model_trace, guide_trace


def _path_observation(site) -> bool:
    """Whether a model site is a vectorized program's observation: observed, event shape (T, x_dim)."""
    return site["is_observed"] and len(site["fn"].event_shape) == 2


@torch.no_grad()
def elbo_terms(model: Callable, guide: Callable, batch, num_particles: int = 1) -> Dict[str, torch.Tensor]:
    """Per-sequence and per-step terms of the dynamical ELBO (the estimator of DynamicalELBO, free
    bits and annealing off), averaged over ``num_particles`` draws (vectorised by repeating the batch).
    ``model``/``guide``: either form of a program (per-step or time-vectorized).

    Returns ``log_lik`` (B, T): log p(x_t | z_t) (zero on padding); ``kl`` (B, T): the per-step KL
    (the VRAE's single KL is put at step 0); ``elbo`` (B,): their sums, log_lik - kl.
    """
    B, T = batch.batch_size, batch.num_steps
    model_trace, guide_trace = _traces(model, guide, repeat_batch(batch, num_particles))
    log_lik = batch.x.new_zeros(num_particles * B, T)  # (S*B, T)
    kl = batch.x.new_zeros(num_particles * B, T)
    for name, site in _sample_sites(model_trace):
        t = int(name.split("_")[1]) if "_" in name else 0  # per-step sites x_t, z_t; the VRAE's z at 0
        if site["is_observed"]:
            if _path_observation(site):  # a vectorized program's x: (T, x_dim)
                log_lik += observed_step_log_prob(site["fn"], site["value"])
            else:
                log_lik[:, t] += site["log_prob"]
        else:
            columns = site_kl_steps(guide_trace.nodes[name], site)
            if columns.steps:
                kl += columns.kl
            else:
                kl[:, t] += columns.kl[:, 0]
    log_lik = log_lik.reshape(num_particles, B, T).mean(0)
    kl = kl.reshape(num_particles, B, T).mean(0)
    return {"log_lik": log_lik, "kl": kl, "elbo": log_lik.sum(1) - kl.sum(1)}


def importance_terms(model: Callable, guide: Callable, batch, num_samples: int, *args) -> Dict[str, torch.Tensor]:
    """The terms of the importance weights of ``num_samples`` draws z_k ~ q(z | x) per sequence, each
    (K, B), differentiable (reparameterized draws): ``log_lik`` sum_t log p(x_t | z_k), ``log_prior``
    log p(z_k), ``log_q`` log q(z_k | x) (auxiliary guide sites included); the log weight is
    log_lik + log_prior - log_q. The K draws run as one batch (the batch repeated K times, copy-major);
    the programs are called as ``program(repeated_batch, *args)``, and their log densities taken as they
    come (any ``poutine.scale`` inside them applies: pass unscaled programs for a bound)."""
    B, K = batch.batch_size, num_samples
    repeated = repeat_batch(batch, K)
    guide_trace = poutine.trace(guide).get_trace(repeated, *args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(repeated, *args)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    log_lik, log_prior, log_q = (batch.x.new_zeros(K * B) for _ in range(3))  # (K*B,) each
    for _, site in _sample_sites(model_trace):
        if site["is_observed"]:
            log_lik = log_lik + site["log_prob"]
        else:
            log_prior = log_prior + site["log_prob"]
    for _, site in _sample_sites(guide_trace):
        log_q = log_q + site["log_prob"]
    return {"log_lik": log_lik.reshape(K, B), "log_prior": log_prior.reshape(K, B), "log_q": log_q.reshape(K, B)}


@torch.no_grad()
def iw_bound(model: Callable, guide: Callable, batch, num_samples: int, chunk: int = 64) -> torch.Tensor:
    """The K-sample importance-weighted bound log (1/K) sum_k p(x, z_k) / q(z_k | x), per sequence (B,),
    for either form of a program.

    Draws are vectorised ``chunk`` at a time by repeating the batch (:func:`importance_terms`).
    """
    log_ws = []
    done = 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        terms = importance_terms(model, guide, batch, k)
        log_ws.append(terms["log_lik"] + terms["log_prior"] - terms["log_q"])  # (k, B)
        done += k
    log_w = torch.cat(log_ws, 0)  # (K, B)
    return torch.logsumexp(log_w, 0) - math.log(num_samples)
