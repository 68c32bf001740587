"""Gradient estimators of a model's bound, by name, and a measurement of their value, variance and cost.

:func:`make_estimator` maps a name to a Pyro ELBO configured for our per-step programs (``model``/
``guide``, one site per step, sequences in ``pyro.plate("sequences", dim=-1)``):

- ``"analytic"``: :class:`dvae.infer.DynamicalELBO`, the ELBO with each step's KL in closed form given
  the sampled z_{t-1} (``TraceMeanField_ELBO`` on per-step programs); the trainer's default.
- ``"sampled"``: ``pyro.infer.Trace_ELBO``, the same ELBO with every KL estimated by the one draw,
  log q(z_t | .) - log p(z_t | z_{t-1}, .).
- ``"iw"``: ``pyro.infer.RenyiELBO(alpha=0, num_particles=K)``, the importance-weighted bound
  log (1/K) sum_k p(x, z_k) / q(z_k | x) (Burda et al. 2016) with its reparameterized gradient; the K
  particles are vectorized in a plate at dim -2 (``max_plate_nesting=1``: the models' one plate is
  "sequences" at dim -1). K = 1 is the single-sample ELBO estimate, as ``"sampled"``.
- ``"tmc"``: ``pyro.infer.TraceTMC_ELBO``, Tensor Monte Carlo (Aitchison 2019): every latent site of
  the guide draws K samples (``config_enumerate(default="parallel", num_samples=K)``), and the bound
  is log of the average of p(x, z)/q(z) over all K^T combinations of per-step samples, summed exactly
  by tensor contraction along the chain (``pyro.markov`` recycles the enumeration dims), so each step
  costs K x K factor evaluations. K >= 2.

Where TMC applies: (1) the estimate exp(TMC) is unbiased for p(x) (so TMC is a bound on log p(x))
only when each step's proposal does not depend on the previous latent: the DMM's ``mean_field``
guide q(z_t | x_{t:T}). With the structured ``dks`` guide q(z_t | z_{t-1}, .), Pyro draws sample k of
z_t from particle k of z_{t-1} (the "diagonal" strategy) but scores every pair (j, k) as if z_t^k
were drawn given z_{t-1}^j, which is not the density it was drawn from; the result is then no longer a
bound (``tests/infer/test_estimators.py`` measures this against a brute-force p(x)). (2) It needs
per-step latent sites whose networks broadcast over extra sample dimensions on the left (the DMM's
do); not the time-vectorized programs, whose path is one site. (3) Its cost is K^2 per step and its
memory K^2 * B per factor, so it fits short sequences and small K.

All estimators score the UNSCALED programs: an importance-weighted or TMC bound is not linear in a
``poutine.scale`` of its log densities (log-mean-exp of scaled weights is not the scaled bound), so
scaling to "per step" is done afterwards, on the value and on the gradient, by dividing by the number
of real steps; annealing is off (factor 1).

:func:`measure_estimator` draws the estimator R times at fixed parameters and reports the bound's value
(mean and standard error), the variance of its gradient and the time per gradient evaluation.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Tuple

import numpy as np
import pyro
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceTMC_ELBO, config_enumerate

from dvae.data.batch import SequenceBatch
from dvae.infer.elbo import DynamicalELBO

ESTIMATORS = ("analytic", "sampled", "iw", "tmc")
"""The estimator names :func:`make_estimator` knows."""

DESCRIPTIONS = {
    "analytic": "ELBO, per-step KL in closed form given the sampled z_{t-1} (DynamicalELBO)",
    "sampled": "ELBO, every KL term estimated by the one draw (Trace_ELBO)",
    "iw": "importance-weighted bound with K particles (RenyiELBO, alpha = 0)",
    "tmc": "Tensor Monte Carlo bound with K samples per step (TraceTMC_ELBO)",
}


def _check(name: str, particles: int) -> None:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r} (choose {', '.join(ESTIMATORS)})")
    if not (isinstance(particles, int) and particles >= 1):
        raise ValueError(f"particles must be an integer >= 1, got {particles!r}")
    if name == "tmc" and particles < 2:
        raise ValueError("the tmc estimator needs at least 2 samples per step (particles >= 2)")


def broadcasts(dvae_model) -> bool:
    """Whether ``dvae_model``'s programs broadcast over sample dimensions (its class's ``sample_broadcast``:
    the DMM, LGSSM and VAE do; the VRNN's and VRAE's recurrent networks take (B, .) inputs and hidden
    states, so their K particles are drawn one after another and TMC does not apply to them)."""
    return bool(getattr(dvae_model, "sample_broadcast", False))


def make_estimator(name: str, particles: int = 1, dvae_model=None) -> pyro.infer.ELBO:
    """The Pyro ELBO of estimator ``name`` with ``particles`` draws (K). ``analytic`` and ``sampled``
    average ``particles`` independent single-draw estimates of the ELBO (their value does not depend on
    K, their variance falls as 1/K); ``iw`` and ``tmc`` use K inside the bound (tighter as K grows).
    ``dvae_model``: the model it will score; a family whose programs do not broadcast over particles
    (the VRNN, the VRAE) draws its K particles one after another (the same estimate, K passes)."""
    _check(name, particles)
    vectorize = particles > 1 and (dvae_model is None or broadcasts(dvae_model))
    if name == "analytic":
        return DynamicalELBO(num_particles=particles)
    if name == "sampled":
        return Trace_ELBO(num_particles=particles, max_plate_nesting=1, vectorize_particles=vectorize)
    if name == "iw":
        return RenyiELBO(alpha=0.0, num_particles=particles, max_plate_nesting=1, vectorize_particles=vectorize)
    if dvae_model is not None:
        _check_tmc(dvae_model)
    return TraceTMC_ELBO(max_plate_nesting=1)


def _check_tmc(dvae_model) -> None:
    if not broadcasts(dvae_model):
        raise ValueError(f"the tmc estimator is not defined for the {getattr(dvae_model, 'name', '?')}: it draws K "
                         "samples of every latent site at once, and this family's programs do not "
                         "broadcast over them (sample_broadcast is False)")


def estimator_programs(dvae_model, name: str, particles: int = 1) -> Tuple[Callable, Callable]:
    """(model, guide) for estimator ``name``: the model's per-step programs, the guide's latent sites
    annotated for K-sample parallel enumeration for ``tmc``."""
    _check(name, particles)
    model, guide = dvae_model.model, dvae_model.guide
    if name == "tmc":
        _check_tmc(dvae_model)
        guide = config_enumerate(guide, default="parallel", num_samples=particles, expand=False)
    return model, guide


def tmc_applies(dvae_model) -> Tuple[bool, str]:
    """Whether TMC gives a bound on ``dvae_model`` (see the module docstring), and why not."""
    guide = getattr(getattr(dvae_model, "config", None), "guide", None)
    tmc_guides = getattr(dvae_model, "tmc_guides", ())
    if not tmc_guides:
        return False, "this family's per-step latent sites are not set up for K-sample enumeration"
    if guide not in tmc_guides:
        return False, ("the dks guide's q(z_t | z_{t-1}, .) depends on the previous latent, so the pairwise TMC "
                       "weights are not those of the draws (not a bound)")
    return True, ""


@dataclass
class EstimatorStats:
    """What :func:`measure_estimator` reports, per real step of the batch (nats per step):

    ``value_mean``, ``value_se``: the estimator's bound (ELBO, IW or TMC), mean and standard error over
    the R draws. ``grad_var``: the total variance of the gradient of the per-step objective, the trace
    of its covariance over draws, sum_j Var_r(g_rj) (ddof 1) summed over every parameter entry j.
    ``grad_norm``: |mean gradient| (Euclidean). ``grad_snr``: the signal-to-noise ratio
    |mean gradient| / sqrt(grad_var), the size of the expected step against the size of its noise
    (one global ratio: entries whose gradient is deterministic, e.g. the analytic KL of z_0, would make
    per-entry ratios infinite). ``ms_per_step``: the median wall time of one evaluation of the
    objective and its gradient (``loss_and_grads``, forward and backward; no optimiser update).
    """

    estimator: str
    particles: int
    draws: int
    num_steps: int
    value_mean: float
    value_se: float
    grad_var: float
    grad_norm: float
    grad_snr: float
    ms_per_step: float
    grads: Optional[np.ndarray] = field(default=None, repr=False)
    """(R, P) the per-step objective's gradients, when asked for (``keep_grads``)."""
    values: Optional[np.ndarray] = field(default=None, repr=False)
    """(R,) the per-step values of the draws."""

    def row(self) -> dict:
        """The JSON-able figures (no arrays)."""
        return {k: v for k, v in asdict(self).items() if k not in ("grads", "values")}


def measure_estimator(dvae_model, batch: SequenceBatch, name: str, particles: int = 1, draws: int = 100,
                      seed: int = 0, keep_grads: bool = False, warmup: int = 1) -> EstimatorStats:
    """Draw estimator ``name`` (K = ``particles``) ``draws`` times on ``batch`` at the model's current
    parameters and report its value, gradient variance and time (:class:`EstimatorStats`).

    The gradient of every draw is that of the per-step objective (bound / number of real steps) with
    respect to every parameter of ``dvae_model``; its mean and variance are accumulated in float64
    (Welford), so memory does not grow with ``draws``. Clears Pyro's parameter store first (as the
    trainer does: ``pyro.module`` would otherwise reuse a stale parameter of the same name) and leaves
    the parameters as they were (no update). Seeded by ``seed``; ``warmup`` untimed, unrecorded draws
    first.
    """
    _check(name, particles)
    if draws < 2:
        raise ValueError(f"draws must be >= 2 to estimate a variance, got {draws}")
    pyro.clear_param_store()
    model, guide = estimator_programs(dvae_model, name, particles)
    elbo = make_estimator(name, particles, dvae_model)
    params = [p for p in dvae_model.parameters() if p.requires_grad]
    num_steps = int(batch.lengths.sum())
    was_training = dvae_model.training
    dvae_model.train()
    pyro.set_rng_seed(seed)

    def one_draw():
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        loss = float(elbo.loss_and_grads(model, guide, batch))  # read inside the clock: the same sync for every estimator
        if params[0].is_cuda:
            torch.cuda.synchronize()  # the backward's kernels too
        seconds = time.perf_counter() - t0
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])  # (P,)
        return -loss / num_steps, -g.detach().double() / num_steps, seconds

    for _ in range(warmup):
        one_draw()
    values, seconds, kept = [], [], []
    mean = var_sum = None  # Welford: running mean (P,) and sum of squared deviations (P,)
    for r in range(draws):
        value, g, dt = one_draw()
        values.append(value)
        seconds.append(dt)
        if keep_grads:
            kept.append(g.cpu().numpy())
        if mean is None:
            mean, var_sum = g.clone(), torch.zeros_like(g)
        else:
            delta = g - mean
            mean += delta / (r + 1)
            var_sum += delta * (g - mean)
    for p in params:
        p.grad = None
    dvae_model.train(was_training)
    v = np.asarray(values)
    grad_var = float(var_sum.sum()) / (draws - 1)
    grad_norm = float(mean.norm())
    return EstimatorStats(
        estimator=name, particles=particles, draws=draws, num_steps=num_steps, value_mean=float(v.mean()),
        value_se=float(v.std(ddof=1) / math.sqrt(draws)), grad_var=grad_var, grad_norm=grad_norm,
        grad_snr=grad_norm / math.sqrt(grad_var) if grad_var > 0 else math.inf,
        ms_per_step=1e3 * float(np.median(seconds)), grads=np.stack(kept) if keep_grads else None, values=v)
