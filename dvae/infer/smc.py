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
log-Jacobian per observed step, as ``dvae.infer.evaluation.evaluate`` does for the bounds.

The generic core is :func:`particle_filter` (three callables). :func:`model_particle_filter` runs it
on any model through the state-space contract of ``dvae.models.base.DynamicalVAE`` (a particle is a
model state: the DMM's z_t, the VRNN's (z_t, h_{t-1}), the VRAE's code and decoder state, the
LGSSM's z_t, a user's own family's); :func:`lgssm_particle_filter` adapts it to known linear-Gaussian
parameters (A, B, C, Q, R, m0, P0).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch

from dvae.data.batch import SequenceBatch
from dvae.models.state import map_state, map_values

State = Union[torch.Tensor, tuple, dict]
"""A particle state: a tensor (B, P, ...), a tuple of them, or a model's state (a dict of them)."""


def _map(fn, state):
    return map_state(fn, state) if isinstance(state, dict) else map_values(fn, state)


def _first(state) -> torch.Tensor:
    """The first tensor of a state (its leading dims are (B, P))."""
    values = state.values() if isinstance(state, dict) else (state if isinstance(state, tuple) else (state,))
    for v in values:
        found = v if torch.is_tensor(v) else (_first(v) if isinstance(v, (tuple, dict)) else None)
        if found is not None:
            return found
    return None


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
    if ref is None or ref.shape[:2] != (B, P):
        raise ValueError(f"initial({P}) must give a state of shape (B, P, ...) = ({B}, {P}, ...), "
                         f"got {None if ref is None else tuple(ref.shape)}")
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
def _per_particle(v: Optional[torch.Tensor], P: int) -> Optional[torch.Tensor]:
    """A per-sequence tensor (B, ...) repeated for each particle: (B * P, ...), particles of a sequence adjacent."""
    return None if v is None else v.repeat_interleave(P, 0)


def model_particle_filter(model, batch: SequenceBatch, num_particles: int, ess_threshold: float = 0.5,
                          return_ess: bool = False):
    """The bootstrap filter with a model's own dynamics (its guide is not used), through the contract:
    s_0 from ``initial_state`` and p(z_0), s_t from ``transition_step`` with the observed x_{t-1} and
    u_{t-1}, x_t scored by ``emission``. log p(x | u) per sequence (B,) in the units of ``batch``
    (standardised data: subtract ``Normalizer.log_det_per_step`` per observed step for data units).
    Conditions (batch.c) and missing entries (batch.obs_mask) are scored as the model scores them."""
    batch = model.check_batch(batch.to(model.device))
    B, P = batch.batch_size, num_particles

    def unflat(state):
        return map_state(lambda v: v.reshape((B, P) + v.shape[1:]), state)

    def flat(state):
        return map_state(lambda v: v.reshape((B * P,) + v.shape[2:]), state)

    def draw(state, p_z):
        return unflat(model.with_latent(state, p_z.sample()))

    def initial(P_):
        return draw(*model.initial_state(B * P, _per_particle(model.condition(batch), P)))

    def transition(t, state):
        x, om = _per_particle(batch.x[:, t - 1], P), _per_particle(batch.step_obs_mask(t - 1), P)
        return draw(*model.transition_step(flat(state), x, _per_particle(batch.step_u(t - 1), P), om))

    def log_emission(t, state):
        x, om = _per_particle(batch.x[:, t], P), _per_particle(batch.step_obs_mask(t), P)
        return model.emission(flat(state), om).log_prob(x).reshape(B, P)

    was_training = model.training
    model.eval()  # no dropout; the mode is restored afterwards
    try:  # no argument validation: it would read every parameter back to the host at every step
        with pyro.validation_enabled(False):
            return particle_filter(initial, transition, log_emission, batch.mask, P, ess_threshold, return_ess)
    finally:
        model.train(was_training)


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


def filter_for(model) -> Callable:
    """The particle filter for ``model`` (:func:`model_particle_filter`), or a ValueError when the model
    does not state the state-space contract (``initial_state``, ``transition_step``, ``emission``)."""
    from dvae.models.base import DynamicalVAE

    if getattr(model, "step_by_step_problem", None):
        raise ValueError(model.step_by_step_problem)
    cls = type(model)
    stated = all(getattr(cls, name, None) is not getattr(DynamicalVAE, name)
                 for name in ("initial_state", "transition_step", "emission"))
    if not stated:
        raise ValueError(f"the particle filter needs a model that states its dynamics (initial_state, "
                         f"transition_step, emission): {cls.__name__} does not")
    return model_particle_filter


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
