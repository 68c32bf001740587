"""A bootstrap particle filter: an estimate of log p(x_{1:T} | u) under a state-space model.

For a model with a Markov state s_t (the DMM's z_t; the VRNN's (z_t, h_{t-1})),

    s_0 ~ p(s_0),   s_t ~ p(s_t | s_{t-1}, u_{t-1}),   x_t ~ p(x_t | s_t),

the bootstrap filter (Gordon et al. 1993) proposes each particle's next state from the transition
itself and weights it by the emission density. With normalised weights W_{t-1}^i carried from the
previous step (1/P after a resampling),

    p_hat(x_t | x_{<t}) = sum_i W_{t-1}^i p(x_t | s_t^i),     log Z_hat = sum_t log p_hat(x_t | x_{<t}),

and Z_hat is an UNBIASED estimate of p(x_{1:T} | u) for any number of particles P (Del Moral 2004).
By Jensen, E[log Z_hat] <= log p(x_{1:T} | u): log Z_hat is a stochastic lower bound on the
log-likelihood, whose bias and variance shrink like 1/P (for a fixed model the bias is about
-Var(log Z_hat) / 2). Unlike the ELBO and IW bounds of a trained model it needs no guide: it scores
the generative model alone, so on a nonlinear system it measures how good the learned transition
and emission are, apart from how good the learned q is.

Resampling: systematic (one uniform per sequence; lower variance than multinomial), done at a step
where the effective sample size 1 / sum_i (W^i)^2 falls below ``ess_threshold`` * P (1.0: every
step; 0: never), per sequence. The estimate is unbiased under either choice.

Everything is vectorised over the batch and the particles: a state is a tensor (B, P, d) or a tuple
of such tensors (the VRNN's (z, GRU state), or an LSTM's (h, c) inside it); networks see them
reshaped to (B * P, d). Tensors are made on the device of the state the callables return.

Padded steps (``mask`` false; sequences padded at the end) contribute nothing: their weight
increment is 0 and nothing is resampled there. Ragged batches thus give each sequence the estimate
of its own length. The estimate is in the units of the data the callables score; a model trained
on standardised data reports it in data units after the caller subtracts the standardisation's
log-Jacobian per observed step, as ``dvae.infer.trainer.evaluate`` does for the bounds.

The generic core is :func:`particle_filter` (three callables); :func:`dmm_particle_filter`,
:func:`vrnn_particle_filter` and :func:`lgssm_particle_filter` adapt it to a DMM's learned networks,
a VRNN's, and known linear-Gaussian parameters (A, B, C, Q, R, m0, P0).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import pyro.distributions as dist
import torch

from dvae.data.batch import SequenceBatch
from dvae.models.base import observation_dist
from dvae.nn import Recurrence

State = Union[torch.Tensor, tuple]
"""A particle state: a tensor (B, P, ...) or a tuple of them."""


def _map(fn, state):
    return tuple(_map(fn, s) for s in state) if isinstance(state, tuple) else fn(state)


def _first(state) -> torch.Tensor:
    return _first(state[0]) if isinstance(state, tuple) else state


def _gather(state, idx: torch.Tensor):
    """Each sequence's particles reordered by ``idx`` (B, P) (ancestor indices)."""
    def take(s):
        index = idx.reshape(idx.shape + (1,) * (s.dim() - 2)).expand(idx.shape + s.shape[2:])
        return torch.gather(s, 1, index)
    return _map(take, state)


def systematic_resample(log_w: torch.Tensor) -> torch.Tensor:
    """Ancestor indices (B, P) by systematic resampling from normalised log-weights ``log_w`` (B, P):
    positions (i + U) / P, i = 0 .. P-1, U ~ Uniform(0, 1) per sequence, looked up in the cumulative
    weights. Each particle gets floor(P W^i) or that plus one offspring."""
    B, P = log_w.shape
    cdf = torch.cumsum(log_w.exp(), -1)  # (B, P)
    cdf = cdf / cdf[:, -1:]  # guard against rounding: the last entry is exactly 1
    u = torch.rand(B, 1, device=log_w.device, dtype=log_w.dtype)  # (B, 1)
    positions = (torch.arange(P, device=log_w.device, dtype=log_w.dtype)[None] + u) / P  # (B, P)
    return torch.searchsorted(cdf.contiguous(), positions.contiguous()).clamp(max=P - 1)


@torch.no_grad()
def particle_filter(initial: Callable[[int], State], transition: Callable[[int, State], State],
                    log_emission: Callable[[int, State], torch.Tensor], mask: torch.Tensor, num_particles: int,
                    ess_threshold: float = 0.5, return_ess: bool = False):
    """The bootstrap particle filter's estimate of log p(x | u) per sequence (B,).

    ``initial(P)``: P draws of s_0 per sequence, a state (B, P, ...); ``transition(t, state)``: a draw
    of s_t given s_{t-1} (t >= 1; the callable knows u_{t-1}); ``log_emission(t, state)``: log p(x_t |
    s_t) (B, P). ``mask`` (B, T) bool: real steps (padded steps contribute nothing). ``ess_threshold``:
    resample where ESS < ess_threshold * P (systematic resampling). With ``return_ess``, also the ESS
    before resampling at every step (B, T) (P on padded steps: they change no weight).
    """
    if num_particles < 1:
        raise ValueError(f"the particle filter needs at least 1 particle, got {num_particles}")
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
    B, T = mask.shape
    P = num_particles
    state = initial(P)
    ref = _first(state)
    assert ref.shape[:2] == (B, P), (ref.shape, B, P)
    mask = mask.to(ref.device)
    log_w = ref.new_full((B, P), -math.log(P))  # normalised log-weights
    log_z = ref.new_zeros(B)  # (B,)
    arange = torch.arange(P, device=ref.device).expand(B, P)
    ess_steps = []
    for t in range(T):
        if t > 0:
            state = transition(t, state)
        m = mask[:, t]  # (B,)
        inc = log_emission(t, state)  # (B, P)
        assert inc.shape == (B, P), (inc.shape, B, P)
        inc = torch.where(m[:, None], inc, inc.new_zeros(()))
        joint = log_w + inc  # (B, P)
        step = torch.logsumexp(joint, -1)  # (B,): log p_hat(x_t | x_{<t})
        log_z = log_z + torch.where(m, step, step.new_zeros(()))
        log_w = joint - step[:, None]  # normalised
        ess = 1.0 / log_w.exp().pow(2).sum(-1)  # (B,)
        ess_steps.append(torch.where(m, ess, ess.new_full((), float(P))))
        if t < T - 1:
            redo = m & (ess < ess_threshold * P)  # (B,)
            if bool(redo.any()):  # one device read per step (a CUDA sync); left: the eval path, not training
                idx = torch.where(redo[:, None], systematic_resample(log_w), arange)  # (B, P)
                state = _gather(state, idx)
                log_w = torch.where(redo[:, None], log_w.new_full((), -math.log(P)), log_w)
    if return_ess:
        return log_z, torch.stack(ess_steps, 1)  # (B,), (B, T)
    return log_z


# --- adapters ----------------------------------------------------------------------------------------
def _flat(s: torch.Tensor) -> torch.Tensor:
    return s.reshape((-1,) + s.shape[2:])  # (B, P, ...) -> (B * P, ...)


def _per_particle(v: Optional[torch.Tensor], P: int) -> Optional[torch.Tensor]:
    """A per-sequence tensor (B, d) repeated for each particle: (B * P, d)."""
    return None if v is None else v[:, None].expand((v.shape[0], P) + v.shape[1:]).reshape((-1,) + v.shape[1:])


def dmm_particle_filter(model, batch: SequenceBatch, num_particles: int, ess_threshold: float = 0.5,
                        return_ess: bool = False):
    """The bootstrap filter with a DMM's learned initial state, transition and emitter (its guide is
    not used): log p(x | u) per sequence (B,) in the units of ``batch`` (standardised data: subtract
    ``Normalizer.log_det_per_step`` per observed step for data units). Conditional DMMs (batch.c) and
    missing entries (batch.obs_mask) are scored as the model scores them."""
    batch = model._check(batch.to(model.device))
    B, P, z_dim = batch.batch_size, num_particles, model.config.z_dim
    c = _per_particle(model._c(batch), P)  # (B * P, c_dim) or None

    def initial(P_):
        loc, scale = model.initial(B * P, c)  # (B * P, z_dim)
        return dist.Normal(loc, scale).sample().reshape(B, P, z_dim)

    def transition(t, z):
        u = _per_particle(model._u(batch, t - 1), P)  # (B * P, u_dim) or None
        loc, scale = model.transition(_flat(z), model._drive(u, c))
        return dist.Normal(loc, scale).sample().reshape(B, P, z_dim)

    def log_emission(t, z):
        x = _per_particle(batch.x[:, t], P)  # (B * P, x_dim)
        om = _per_particle(model._obs_mask(batch, t), P)
        d = observation_dist(model.emitter(_flat(z)), model.config.likelihood, om)
        return d.log_prob(x).reshape(B, P)

    return _filter_in_eval_mode(model, initial, transition, log_emission, batch.mask, P, ess_threshold, return_ess)


def _filter_in_eval_mode(model, *args):
    """:func:`particle_filter` with ``model`` in eval mode (no dropout), its mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        return particle_filter(*args)
    finally:
        model.train(was_training)


def vrnn_particle_filter(model, batch: SequenceBatch, num_particles: int, ess_threshold: float = 0.5,
                         return_ess: bool = False):
    """The bootstrap filter with a VRNN's prior, emitter and recurrence: each particle carries
    (z_t, the recurrence's state h_{t-1}); z_t ~ p(z_t | h_{t-1}), x_t scored by p(x_t | z_t, h_{t-1}),
    then h_t = f(x_t, z_t, u_t, h_{t-1}) with the observed x_t. log p(x | u) per sequence (B,), in the
    units of ``batch`` (see :func:`dmm_particle_filter`)."""
    batch = model._check(batch.to(model.device))
    B, P, z_dim = batch.batch_size, num_particles, model.config.z_dim

    def unflat(s):
        return _map(lambda v: v.reshape((B, P) + v.shape[1:]), s)

    def draw_z(rec_state):  # z ~ p(z | h) for a flat recurrence state
        loc, scale = model.prior(Recurrence.output(rec_state))
        return dist.Normal(loc, scale).sample()  # (B * P, z_dim)

    def initial(P_):
        rec = model.recurrence.initial(B * P)
        return unflat((draw_z(rec), rec))

    def transition(t, state):
        z, rec = _map(_flat, state)
        x = _per_particle(batch.x[:, t - 1], P)
        om = _per_particle(model._obs_mask(batch, t - 1), P)
        rec = model._step(x, z, _per_particle(model._u(batch, t - 1), P), rec, om)  # h_{t-1}
        return unflat((draw_z(rec), rec))

    def log_emission(t, state):
        z, rec = _map(_flat, state)
        x = _per_particle(batch.x[:, t], P)
        om = _per_particle(model._obs_mask(batch, t), P)
        params = model.emitter(torch.cat([model.phi_z(z), Recurrence.output(rec)], -1))
        return observation_dist(params, model.config.likelihood, om).log_prob(x).reshape(B, P)

    return _filter_in_eval_mode(model, initial, transition, log_emission, batch.mask, P, ess_threshold, return_ess)


def lgssm_particle_filter(params: Sequence, batch: SequenceBatch, num_particles: int, ess_threshold: float = 0.5,
                          return_ess: bool = False):
    """The bootstrap filter with known linear-Gaussian parameters (A, B, C, Q, R, m0, P0) (array-likes,
    e.g. ``dvae.eval.exact.LGSSMParams`` or ``envs.linear_gaussian.LinearGaussianMatrices``):

        z_0 ~ N(m0, P0),  z_t ~ N(A z_{t-1} + B u_{t-1}, Q),  x_t ~ N(C z_t, R).

    Runs in the batch's dtype and device; ``batch.u`` (B, T, u_dim) or None (zero controls).
    The Kalman filter's log p(x | u) is its limit as the particles grow."""
    batch.check()
    dev, dtype = batch.x.device, batch.x.dtype
    A, Bm, C, Q, R, m0, P0 = (torch.as_tensor(v, dtype=dtype, device=dev) for v in params)
    Bsz, P, z_dim = batch.batch_size, num_particles, A.shape[0]
    assert C.shape == (batch.x_dim, z_dim), (C.shape, batch.x_dim, z_dim)
    init = dist.MultivariateNormal(m0, P0)
    noise = dist.MultivariateNormal(torch.zeros(z_dim, dtype=dtype, device=dev), Q)
    obs = torch.linalg.cholesky(R)

    def initial(P_):
        return init.sample((Bsz, P))  # (B, P, z_dim)

    def transition(t, z):
        mean = z @ A.T  # (B, P, z_dim)
        if batch.u is not None:
            mean = mean + (batch.u[:, t - 1] @ Bm.T)[:, None]
        return mean + noise.sample((Bsz, P))

    def log_emission(t, z):
        loc = z @ C.T  # (B, P, x_dim)
        return dist.MultivariateNormal(loc, scale_tril=obs).log_prob(batch.x[:, t][:, None])  # (B, P)

    return particle_filter(initial, transition, log_emission, batch.mask, P, ess_threshold, return_ess)


ADAPTERS = {"dmm": dmm_particle_filter, "vrnn": vrnn_particle_filter}
"""Model families whose learned networks the filter can run (the others have no Markov state given
the past: the VRAE's one code, the static VAE; the LGSSM is exact)."""


def filter_for(model) -> Callable:
    """The particle-filter adapter of a trained model's family, or a ValueError naming the families."""
    name = getattr(model, "name", type(model).__name__)
    if name not in ADAPTERS:
        raise ValueError(f"the particle filter runs on the {' and '.join(ADAPTERS)} models, not {name}")
    return ADAPTERS[name]


@torch.no_grad()
def evaluate_pf(model, xs, us, num_particles: int, log_det_per_step: float = 0.0, batch_size: int = 64,
                cs=None, x_log_std=None, ess_threshold: float = 0.5) -> dict:
    """The particle filter's estimate over a set of sequences (standardised lists as :func:`evaluate`
    takes them), per observed step in the data's units: ``{"num_steps", "nll_pf_per_step"}``
    (-sum log Z_hat / steps + ``log_det_per_step``; the missing-entry correction as ``evaluate``)."""
    from dvae.data.batching import batches
    from dvae.infer.evaluation import missing_log_det

    run = filter_for(model)
    total, steps, extra = 0.0, 0, 0.0
    for batch in batches(xs, us, batch_size, by_length=True, cs=cs):
        steps += int(batch.lengths.sum())
        batch = batch.to(model.device)
        if batch.obs_mask is not None:
            extra += missing_log_det(batch, log_det_per_step, x_log_std).sum().item()
        total += run(model, batch, num_particles, ess_threshold).sum().item()
    return {"num_steps": steps, "nll_pf_per_step": -total / steps + log_det_per_step + extra / steps}
