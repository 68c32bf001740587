"""The model interface every family implements, and its configuration.

A model is an ``nn.Module`` whose ``model(batch)`` and ``guide(batch)`` are Pyro programs over a
:class:`~dvae.data.SequenceBatch`, with one sample site per time step for per-step latents
(``z_0 .. z_{T-1}``) and observations (``x_0 .. x_{T-1}``), sequences in ``pyro.plate("sequences")``,
time in ``pyro.markov``, and padded steps masked out.

Every model also has a time-vectorized form of the same program, ``model_vectorized(batch,
annealing_factor=1.0)`` / ``guide_vectorized(...)``: the latent path is ONE site ``"z"`` (batch shape
(B,), event shape (T, z_dim); the VRAE's single ``"z"`` is unchanged) and the observations ONE site
``"x"`` (event shape (T, x_dim)), padded steps masked out inside the distributions
(``dvae.models.paths``). The guide still samples step by step where it must (z_t depends on z_{t-1}),
drawing the same normals in the same order as the per-step guide, so the two forms give the same ELBO
and the same gradients on the same seed; the model scores every step in batched calls.
:class:`dvae.infer.DynamicalELBO` scores both forms (analytic per-step KL, annealing, free bits).
``programs(vectorized=True)`` returns the (model, guide) pair of either form. The per-step form is
what ``encode``, ``generate``, ``predict``, ``reconstruct`` run (they read per-step site names).

A subclass states the state-space contract of :class:`DynamicalVAE` (``initial_state``, ``transition_step``,
``with_latent``, ``emission``, and the path densities ``posterior_path``, ``prior_path``,
``emission_path``) and its ``guide``; the programs, ``encode``, ``generate``, ``predict``,
``reconstruct``, ``impute`` (missing entries from the posterior predictive), the world model and the
particle filter are written here and elsewhere over that contract. docs/models.md ("Writing your own
family") gives the shapes.

Missing data: a batch's ``obs_mask`` (B, T, x_dim) marks the observed entries of x; the observation
sites score only those (``observation_dist(..., obs_mask)``), and with ``config.missing`` the networks
that read x see [x with missing entries 0, obs_mask] (``x_input``, ``encoder_input``).

Conditional models (``c_dim`` > 0; the VRAE and the DMM) read a per-sequence condition ``batch.c``
(B, c_dim) in both programs; ``generate(..., c=...)`` takes it, ``predict`` reads the context's.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro import poutine

from dvae.data.batch import SequenceBatch
from dvae.models.config import ModelConfig  # noqa: F401  (re-exported: models import it from here)
from dvae.models.paths import observation_path
from dvae.models.state import State, where_state


def observation_dist(params, likelihood: str, obs_mask: Optional[torch.Tensor] = None) -> dist.TorchDistribution:
    """The emitter's parameters -> a distribution over one x_t with event_shape (x_dim,).

    ``categorical``: x_t is a one-hot row over the vocabulary (x_dim = V), scored by
    ``OneHotCategorical(logits)``: log p(x_t) = log softmax(logits)[token], the cross-entropy.
    One-hot rather than a (.., 1) token id keeps the SequenceBatch contract (x float, x_dim the
    width every network reads): the inference RNNs and the VRNN's phi_x read x unchanged (a linear
    map of a one-hot is an embedding lookup), and sampling gives x in the same layout. It costs
    B * T * V floats a batch, nothing for the vocabularies of a few thousand tokens this is meant for.
    Padded rows are all zeros (no token; masked out by the step mask), so the support check is off.

    ``obs_mask`` (batch_shape + (x_dim,)) bool: the observed entries; the log density sums only
    those (a categorical step counts only if its whole row is observed). None: all observed.
    """
    if likelihood == "categorical":
        d = dist.OneHotCategorical(logits=params[0], validate_args=False)
        return d if obs_mask is None else d.mask(obs_mask.all(-1))
    if likelihood == "gaussian":
        loc, scale = params
        d = dist.Normal(loc, scale)
    else:
        d = dist.Bernoulli(logits=params[0])
    return (d if obs_mask is None else d.mask(obs_mask)).to_event(1)


def append_condition(y: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
    """[y_t, c] at every step: y (B, T, d), c (B, c_dim) or None -> (B, T, d + c_dim)."""
    if c is None:
        return y
    return torch.cat([y, c[:, None].expand(y.shape[0], y.shape[1], c.shape[-1])], -1)  # (B, T, d + c_dim)


def repeat_batch(batch: SequenceBatch, n: int) -> SequenceBatch:
    """Stack ``n`` copies of the batch along the batch dimension: (n * B, ...), copy-major."""
    if n == 1:
        return batch
    u = None if batch.u is None else batch.u.repeat(n, 1, 1)
    c = None if batch.c is None else batch.c.repeat(n, 1)  # (n * B, c_dim)
    obs_mask = None if batch.obs_mask is None else batch.obs_mask.repeat(n, 1, 1)
    return SequenceBatch(batch.x.repeat(n, 1, 1), u, batch.mask.repeat(n, 1), batch.lengths.repeat(n), c, obs_mask)


class DynamicalVAE(nn.Module):
    """Base class: the state-space contract, and everything written once over it.

    **The contract** (what a family states, once). A family is a sequence of steps t = 0 .. T-1 over a
    state (:mod:`dvae.models.state`: a dict of batch-first tensors, ``"z"`` the step's latent z_t and
    the other keys the family's deterministic parts)::

        state, p = initial_state(N, c)                p(z_0 | c), and what step 0 knows before z_0
        z_0 ~ p;  state = with_latent(state, z_0)
        x_0 ~ emission(state)                         p(x_0 | state_0)
        state, p = transition_step(state, x_0, u_0)   the deterministic update, then p(z_1 | .)
        z_1 ~ p;  state = with_latent(state, z_1);  x_1 ~ emission(state);  ...

    - ``initial_state(n, c=None) -> (state, p_z)``: the state before step 0 (no ``"z"`` yet) and p(z_0),
      a distribution with batch shape (n,) and event shape (z_dim,).
    - ``transition_step(state, x, u=None, obs_mask=None) -> (state, p_z)``: from the state of step
      t-1 (with its ``"z"``), its observation x_{t-1} (n, x_dim) (``obs_mask``: its observed entries) and the
      control u_{t-1} (n, u_dim) between the steps: the state of step t before z_t, and p(z_t | .).
    - ``with_latent(state, z) -> state``: the state of step t once z_t is drawn (default: ``"z"`` set;
      a family whose recurrence reads z_t itself, the VRAE's decoder, updates it here).
    - ``emission(state, obs_mask=None) -> p_x``: p(x_t | state of step t), batch (n,), event (x_dim,).
    - ``filter_step(state, x, obs_mask=None) -> q_z`` (optional, where the guide is a filter):
      q(z_t | state of step t before z_t, x_t); the per-step guide is then written over it.
    - ``posterior_path(batch)``, ``prior_path(batch)``, ``emission_path(batch, z)``: the same
      densities for every step at once along a path (the time-vectorized programs and the plain-torch
      loss are written over these).

    **Written once over it**: the per-step Pyro ``model`` (and, with ``filter_step``, ``guide``), the
    vectorized ``model_vectorized``/``guide_vectorized``, :meth:`posterior_last` (the state after a
    context, drawn from the posterior), :meth:`imagine_step` and :meth:`predict` (open loop),
    ``generate``, ``encode``, ``reconstruct``, ``impute``; outside this package the world model
    (:mod:`dvae.world_model`), the bootstrap particle filter (:mod:`dvae.infer.smc`) and the plain-torch
    loss (:mod:`dvae.infer.direct`) use only these public names.

    Capabilities, stated once on each class and read by the command line, config validation and
    ``build_model``: ``guides``, ``conditional``, ``bidirectional_encoder``, ``tmc_guides``, ``kl_balancing``,
    ``sample_broadcast``, ``default_lr``, ``state_scale``, ``frames``.
    """

    name = "dvae"
    markov_history = 1
    """How many earlier steps a step's latent depends on, for ``pyro.markov`` in the per-step programs."""
    guides: Tuple[str, ...] = ()
    """The values ``ModelConfig.guide`` may take (the first is the default); () when the family has one
    guide and ignores the field."""
    conditional = False
    """Takes a per-sequence condition c (``ModelConfig.c_dim`` > 0)."""
    bidirectional_encoder = False
    """Takes ``ModelConfig.bidirectional``."""
    tmc_guides: Tuple[str, ...] = ()
    """Guides under which the per-step programs' latent sites can be enumerated for TMC as a bound."""
    sample_broadcast = False
    """The per-step programs broadcast over extra sample dimensions on the left of (B, ...): K particles
    in one pass (``vectorize_particles``) and TMC's K samples per site. False: particles are drawn one
    after another and TMC is refused (:mod:`dvae.infer.estimators`)."""
    kl_balancing = False
    """Takes ``ModelConfig.kl_balance`` (KL balancing of each step's KL)."""
    default_lr = 1e-2
    """Adam's learning rate when ``TrainConfig.lr`` is None (docs/performance.md, "Tuning the defaults")."""
    state_scale = True
    """Its Gaussian emitter can read the observation scale from the state (``ModelConfig.emission_scale``)."""
    frames = False
    """Reads image data as frames (``ModelConfig.frame_shape``: conv nets on the frames); False: a family
    that reads frames as flat vectors (``dvae train`` gives it no ``frame_shape``)."""
    step_by_step_problem: Optional[str] = None
    """Why this model cannot run step by step (``predict``, the world model, the particle filter), or None
    (a forward state-space model). Read before any such use, which it refuses with a ValueError."""
    sequence_code: Optional[str] = None
    """The Pyro site of the model's one latent code per sequence (batch (B,), event (code_dim,)) in its
    per-step ``model`` and ``guide``, which ``encode`` returns under the same key as (S, B, code_dim):
    ``"z"`` for the VRAE, the static code ``"v"`` for the DSAE; None for a family whose latents are all
    per step. :mod:`dvae.eval.latent` (``dvae latent``) maps this code, and decodes codes by conditioning
    this site."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.bidirectional is None:  # the family's default, recorded in the config (as config.json saves it)
            config.bidirectional = self.default_bidirectional(config)
        self.config = config

    @classmethod
    def default_bidirectional(cls, config: ModelConfig) -> bool:
        """``ModelConfig.bidirectional`` when it is None: off (a family with a bidirectional encoder that
        trains better with it says so here)."""
        return False

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def tensor_kind(self) -> dict:
        """``dtype`` and ``device`` of the parameters, for tensors made to meet them."""
        p = next(self.parameters())
        return {"dtype": p.dtype, "device": p.device}

    # --- the contract (subclasses) -----------------------------------------------------------------
    def initial_state(self, n: int, c: Optional[torch.Tensor] = None) -> Tuple[State, dist.Distribution]:
        raise NotImplementedError

    def transition_step(self, state: State, x: torch.Tensor, u: Optional[torch.Tensor] = None,
                   obs_mask: Optional[torch.Tensor] = None) -> Tuple[State, dist.Distribution]:
        raise NotImplementedError

    def with_latent(self, state: State, z: torch.Tensor) -> State:
        return {**state, "z": z}

    def emission(self, state: State, obs_mask: Optional[torch.Tensor] = None) -> dist.Distribution:
        raise NotImplementedError

    filter_step = None
    """Optional: ``filter_step(state, x, obs_mask=None) -> q(z_t | state, x_t)`` for a filtering guide."""

    def posterior_path(self, batch: SequenceBatch):
        """q(z | x, u) drawn along the whole sequence, plain torch: a path distribution
        (:class:`~dvae.models.paths.GuidePath` / ``FlowPath``) holding its draw in ``.path``."""
        raise NotImplementedError

    def prior_path(self, batch: SequenceBatch):
        """p(z | u) as one distribution over the path (B, T, z_dim), scored at any path in one call."""
        raise NotImplementedError

    def emission_path(self, batch: SequenceBatch, z: torch.Tensor) -> dist.Distribution:
        """p(x_t | .) of every step along the path z: batch shape (B, T), event shape (x_dim,)."""
        raise NotImplementedError

    # --- the per-step Pyro programs, written over the contract ---------------------------------------
    def program_start(self, batch: SequenceBatch, annealing_factor: float = 1.0) -> Tuple[State, dist.Distribution]:
        """The per-step model's start, inside its plate: (state, p(z_0 | .)). A family with sequence-level
        latents (the DSAE's code v) draws their sites here before its state is built from them."""
        return self.initial_state(batch.batch_size, self.condition(batch))

    def model(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, z | u), one site per step, as the contract states it. Returns the latent path (B, T, z_dim)."""
        pyro.module(self.name, self)
        B, T = batch.batch_size, batch.num_steps
        zs = []
        with pyro.plate("sequences", B, dim=-1):
            state, p_z = self.program_start(batch, annealing_factor)
            for t in pyro.markov(range(T), history=self.markov_history):
                m = batch.mask[:, t]  # (B,)
                if t > 0:
                    state, p_z = self.transition_step(state, x, batch.step_u(t - 1), batch.step_obs_mask(t - 1))
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", p_z.mask(m))  # (B, z_dim)
                state = self.with_latent(state, z)
                x = pyro.sample(f"x_{t}", self.emission(state, batch.step_obs_mask(t)).mask(m), obs=batch.x[:, t])
                zs.append(z)
        return torch.stack(torch.broadcast_tensors(*zs), -2)  # (B, T, z_dim); (..., B, T, z_dim) under sample dims

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u) as a filter over the contract (families with ``filter_step``; others override).
        Returns the sampled latent path (B, T, z_dim)."""
        if self.filter_step is None:
            raise NotImplementedError(f"{type(self).__name__} has no filtering guide: it must define guide()")
        pyro.module(self.name, self)
        B, T = batch.batch_size, batch.num_steps
        zs = []
        with pyro.plate("sequences", B, dim=-1):
            state, _ = self.initial_state(B, self.condition(batch))
            for t in pyro.markov(range(T)):
                if t > 0:
                    state, _ = self.transition_step(state, batch.x[:, t - 1], batch.step_u(t - 1), batch.step_obs_mask(t - 1))
                q = self.filter_step(state, batch.x[:, t], batch.step_obs_mask(t))
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", q.mask(batch.mask[:, t]))  # (B, z_dim)
                state = self.with_latent(state, z)
                zs.append(z)
        return torch.stack(zs, 1)  # (B, T, z_dim)

    # --- the time-vectorized programs, written over the path densities --------------------------------
    def model_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, z | u) with the latent path and the observations as one site each. Returns the path."""
        pyro.module(self.name, self)
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            with poutine.scale(scale=annealing_factor):
                z = pyro.sample("z", self.prior_path(batch))  # (B, T, z_dim)
            pyro.sample("x", observation_path(self.emission_path(batch, z), batch.mask), obs=batch.x)
        return z

    def guide_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u) with the latent path as one site. Returns the sampled path (B, T, z_dim)."""
        pyro.module(self.name, self)
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            with poutine.scale(scale=annealing_factor):
                return pyro.sample("z", self.posterior_path(batch))

    @property
    def has_paths(self) -> bool:
        """Whether the family states its path densities (else only the per-step programs exist)."""
        return type(self).posterior_path is not DynamicalVAE.posterior_path

    def programs(self, vectorized: bool = True):
        """(model, guide): the time-vectorized Pyro programs, or the per-step ones (also for a family
        that states no path densities: the same ELBO, one site per step)."""
        if vectorized and (self.has_paths or type(self).model_vectorized is not DynamicalVAE.model_vectorized):
            return self.model_vectorized, self.guide_vectorized
        return self.model, self.guide

    # --- batches at the public boundary ------------------------------------------------------------
    def check_batch(self, batch: SequenceBatch) -> SequenceBatch:
        """The batch, checked against this model's dimensions (ValueError naming the mismatch)."""
        batch.check()
        for what, got, want in (("x_dim", batch.x_dim, self.config.x_dim), ("u_dim", batch.u_dim, self.config.u_dim),
                                ("c_dim", batch.c_dim, self.config.c_dim)):
            if got != want:
                raise ValueError(f"the batch has {what} {got}, this model was built for {what} {want}")
        return batch

    def condition(self, batch: SequenceBatch) -> Optional[torch.Tensor]:
        """The condition c (B, c_dim) of a conditional model; None for an unconditional one (its programs
        ignore ``batch.c``; the public methods refuse it)."""
        if not self.config.c_dim:
            return None
        if batch.c is None or batch.c.shape != (batch.batch_size, self.config.c_dim):
            raise ValueError(f"this model is conditional: the batch needs c of shape (B, {self.config.c_dim})")
        return batch.c

    @property
    def x_in_dim(self) -> int:
        """Width of what the networks that read x see (:meth:`x_input`)."""
        return self.config.x_dim * (2 if self.config.missing else 1)

    def x_input(self, x: torch.Tensor, obs_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """What the networks that read x see: x (missing entries already 0) (..., x_dim), and in
        missing-data mode [x, obs_mask] (..., 2 x_dim), the mask all ones where None."""
        if not self.config.missing:
            return x
        m = torch.ones_like(x) if obs_mask is None else obs_mask.to(x.dtype)
        return torch.cat([x, m], -1)

    def encoder_input(self, batch: SequenceBatch) -> torch.Tensor:
        """The inference RNN's input [x_input, u]: (B, T, x_in_dim + u_dim)."""
        y = self.x_input(batch.x, batch.obs_mask)
        return y if batch.u is None else torch.cat([y, batch.u], -1)

    def code_posterior(self, batch: SequenceBatch) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """loc, scale (B, code_dim) of the guide's q(code | x, u, c) for the :attr:`sequence_code`, where it
        is a diagonal Gaussian in closed form; None where it is not (or the family has no sequence code):
        its posterior mean is then the mean of ``encode``'s draws."""
        return None

    # --- states over the contract ------------------------------------------------------------------
    def latent_path(self, batch: SequenceBatch) -> torch.Tensor:
        """One draw of every step's latent from the guide: (B, T, z_dim)."""
        return self.guide(batch)

    @torch.no_grad()
    def posterior_last(self, batch: SequenceBatch) -> Tuple[State, torch.Tensor]:
        """The state at each sequence's last real step, its latent drawn from the posterior given the
        batch (the guide's path, the deterministic parts rebuilt along it by the contract), and that
        step's observation: (state with rows (B, ...), x_last (B, x_dim))."""
        if self.step_by_step_problem:
            raise ValueError(self.step_by_step_problem)
        batch = self.check_batch(batch)
        z = self.latent_path(batch)  # (B, T, z_dim)
        state, _ = self.initial_state(batch.batch_size, self.condition(batch))
        return self.state_along(batch, state, z)

    def state_along(self, batch: SequenceBatch, state: State, z: torch.Tensor) -> Tuple[State, torch.Tensor]:
        """The contract stepped from a start ``state`` along a latent path z (B, T, z_dim) of ``batch``: the
        state at each sequence's last real step and that step's observation, (state, x_last (B, x_dim))."""
        B, T = batch.batch_size, batch.num_steps
        last = (batch.lengths - 1).clamp(min=0)  # (B,)
        state = self.with_latent(state, z[:, 0])
        for t in range(1, T):  # each sequence's state frozen after its last real step
            new, _ = self.transition_step(state, batch.x[:, t - 1], batch.step_u(t - 1), batch.step_obs_mask(t - 1))
            state = where_state(t <= last, self.with_latent(new, z[:, t]), state)
        return state, batch.x[torch.arange(B, device=z.device), last]

    @torch.no_grad()
    def imagine_step(self, state: State, x: torch.Tensor, u: Optional[torch.Tensor] = None, sample: bool = True):
        """One step of the generative model from a state and its observation, under the control u
        (n, u_dim) between them: (the next state, its observation (n, x_dim), p(x | that state)).
        ``sample=False`` takes the mean of the latent's and of the observation's distribution."""
        state, p_z = self.transition_step(state, x, u)
        state = self.with_latent(state, p_z.sample() if sample else p_z.mean)
        p_x = self.emission(state)
        return state, (p_x.sample() if sample else p_x.mean), p_x

    # --- the interface ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, batch: SequenceBatch, num_samples: int = 1) -> Dict[str, torch.Tensor]:
        """Posterior samples of the latents: ``{"z": (S, B, T, z_dim)}`` (VRAE: (S, B, z_dim))."""
        batch = self.check_batch(batch)
        z = self.guide(repeat_batch(batch, num_samples))  # (S * B, ...)
        return {"z": z.reshape((num_samples, batch.batch_size) + z.shape[1:])}

    def _replayed_emissions(self, batch: SequenceBatch, num_samples: int) -> dist.Distribution:
        """p(x_t | z) of every step under ``num_samples`` posterior draws: batch (S * B, T)."""
        rep = repeat_batch(batch, num_samples)
        guide_trace = poutine.trace(self.guide).get_trace(rep)
        model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(rep)
        return [model_trace.nodes[f"x_{t}"]["fn"] for t in range(batch.num_steps)]

    @torch.no_grad()
    def reconstruct(self, batch: SequenceBatch, num_samples: int = 16) -> Dict[str, torch.Tensor]:
        """Emitter means under posterior samples: ``{"x_mean": (S, B, T, x_dim)}``."""
        batch = self.check_batch(batch)
        means = torch.stack([d.mean for d in self._replayed_emissions(batch, num_samples)], 1)  # (S*B, T, x_dim)
        return {"x_mean": means.reshape(num_samples, batch.batch_size, batch.num_steps, -1)}

    @torch.no_grad()
    def impute(self, batch: SequenceBatch, num_samples: int = 100) -> Dict[str, torch.Tensor]:
        """Fill the missing entries from the posterior predictive p(x_t | x_obs) (in the batch's units).

        Draws ``num_samples`` latent paths from the guide given the observed entries, then x from the
        emitter at each (observation noise included). Returns ``mean`` (B, T, x_dim) the predictive
        mean, ``lo`` / ``hi`` (B, T, x_dim) its 5% and 95% quantiles (a 90% band), and ``x``
        (B, T, x_dim): the observed entries kept, the missing ones replaced by ``mean``.
        """
        batch = self.check_batch(batch)
        B, T = batch.batch_size, batch.num_steps
        draws = torch.stack([d.sample() for d in self._replayed_emissions(batch, num_samples)], 1)  # (S*B, T, x_dim)
        draws = draws.reshape(num_samples, B, T, -1)
        return fill_imputed(batch, draws.mean(0), torch.quantile(draws, 0.05, 0), torch.quantile(draws, 0.95, 0))

    @torch.no_grad()
    def generate(self, num_steps: int, u: Optional[torch.Tensor] = None, num_samples: int = 1,
                 c: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Sequences from the prior: ``{"x": (S, T, x_dim), "x_mean": (S, T, x_dim), "z": ...}``.

        ``u`` (T, u_dim) or (S, T, u_dim): controls (required when the model has them).
        ``c`` (c_dim,) or (S, c_dim): the condition of a conditional model (required when it has one).
        """
        device = self.device
        if self.config.u_dim:
            if u is None:
                raise ValueError("this model takes controls: pass u of shape (num_steps, u_dim)")
            u = torch.as_tensor(u, dtype=next(self.parameters()).dtype, device=device)
            u = u.expand(num_samples, num_steps, self.config.u_dim) if u.dim() == 2 else u
            if u.shape != (num_samples, num_steps, self.config.u_dim):
                raise ValueError(f"u must have shape ({num_steps}, {self.config.u_dim}) or "
                                 f"({num_samples}, {num_steps}, {self.config.u_dim}), got {tuple(u.shape)}")
        if self.config.c_dim:
            if c is None:
                raise ValueError("this model is conditional: pass c of shape (c_dim,) or (num_samples, c_dim)")
            c = torch.as_tensor(c, dtype=next(self.parameters()).dtype, device=device)
            c = c.expand(num_samples, self.config.c_dim) if c.dim() == 1 else c  # (S, c_dim)
            if c.shape != (num_samples, self.config.c_dim):
                raise ValueError(f"c must have shape ({self.config.c_dim},) or ({num_samples}, {self.config.c_dim}), "
                                 f"got {tuple(c.shape)}")
        elif c is not None:
            raise ValueError("this model is not conditional (c_dim = 0): c must be None")
        x = torch.zeros(num_samples, num_steps, self.config.x_dim, device=device)  # (S, T, x_dim)
        lengths = torch.full((num_samples,), num_steps, dtype=torch.long, device=device)
        mask = torch.ones(num_samples, num_steps, dtype=torch.bool, device=device)
        batch = SequenceBatch(x, u, mask, lengths, c)
        trace = poutine.trace(poutine.uncondition(self.model)).get_trace(batch)
        xs = torch.stack([trace.nodes[f"x_{t}"]["value"] for t in range(num_steps)], 1)  # (S, T, x_dim)
        means = torch.stack([trace.nodes[f"x_{t}"]["fn"].mean for t in range(num_steps)], 1)  # (S, T, x_dim)
        return {"x": xs, "x_mean": means, "z": trace.nodes["_RETURN"]["value"]}

    @torch.no_grad()
    def predict(self, context: SequenceBatch, u_future: Optional[torch.Tensor], horizon: int,
                num_samples: int = 64) -> Dict[str, torch.Tensor]:
        """Condition on ``context`` (B, C, .), then roll the prior forward open loop.

        ``u_future`` (B, H, u_dim): ``u_future[:, k]`` drives the transition into predicted step k
        (it is u_{C-1+k} of the full sequence). Returns ``{"x": (S, B, H, x_dim)`` samples,
        ``"x_mean": (S, B, H, x_dim)`` emitter means, ``"z": (S, B, H, z_dim)``}; each sequence's
        predictions start after its last real context step.
        """
        context = self.check_batch(context)
        B = context.batch_size
        if self.config.u_dim:
            if u_future is None:
                raise ValueError("this model takes controls: pass u_future of shape (B, horizon, u_dim)")
            if tuple(u_future.shape) != (B, horizon, self.config.u_dim):
                raise ValueError(f"u_future must have shape ({B}, {horizon}, {self.config.u_dim}), "
                                 f"got {tuple(u_future.shape)}")
            u_future = u_future.to(self.device).repeat(num_samples, 1, 1)  # (S*B, H, u_dim)
        state, x = self.posterior_last(repeat_batch(context.to(self.device), num_samples))
        xs, means, zs = [], [], []
        for k in range(horizon):
            state, x, p_x = self.imagine_step(state, x, None if u_future is None else u_future[:, k])
            xs.append(x), means.append(p_x.mean), zs.append(state["z"])
        out = {"x": torch.stack(xs, 1), "x_mean": torch.stack(means, 1), "z": torch.stack(zs, 1)}  # (S*B, H, .)
        return {k: v.reshape((num_samples, B) + v.shape[1:]) for k, v in out.items()}


def fill_imputed(batch: SequenceBatch, mean, lo, hi) -> Dict[str, torch.Tensor]:
    """The impute result: the predictive ``mean``, ``lo``, ``hi`` (B, T, x_dim) and ``x`` with the
    observed entries kept and the missing ones filled by ``mean``."""
    x = batch.x if batch.obs_mask is None else torch.where(batch.obs_mask, batch.x, mean)
    x = torch.where(batch.mask[..., None], x, x.new_zeros(()))  # padding stays 0
    return {"mean": mean, "lo": lo, "hi": hi, "x": x}
