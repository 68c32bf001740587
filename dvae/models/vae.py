"""The static (frame-wise) VAE: the baseline with no temporal model.

Every time step is an independent draw, for each sequence::

    z_t ~ N(0, I)                 i.i.d. over t: no transition, no memory
    x_t ~ Emitter(z_t)            Gaussian (learned diagonal scale) or Bernoulli

Guide: q(z_t | x_t) = StepPosterior(x_t), one step at a time.

Controls are accepted (the batch may carry u, so the model trains and evaluates through the same
command line and data as the dynamical models) but IGNORED by both densities: under this model x_t
and z_t do not depend on u, so the exact posterior p(z_t | x_t) does not either, and the encoder
reads x_t alone. Comparing this model with the DMM on the same data shows what the dynamics buy.

Prediction is frame-wise too: p(x_{C+k} | x_{1:C}, u) = p(x_{C+k}), the model's marginal, whatever
the context and the controls; ``predict`` draws z from the prior, so the open-loop prediction (the
mean over samples of the emitter means) is the prior's mean of x, the same at every horizon.

As the contract of :class:`~dvae.models.base.DynamicalVAE` states it, the state is z_t alone and
every step's prior is N(0, I): ``initial_state`` and ``transition_step`` give the same standard
normal, ``emission`` reads z_t.

Two forms of the same program (see ``dvae.models.base``): ``model``/``guide`` with a site per step
(``pyro.markov(history=0)``: no step depends on another), and ``model_vectorized``/
``guide_vectorized`` with the latent path as one site ``"z"`` (B, T, z_dim) and the observations as
one site ``"x"`` (B, T, x_dim). The vectorized guide draws its standard normals one (B, z_dim) block
per step, in the order of the per-step guide, so both forms see the same path on the same seed.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, observation_dist
from dvae.models.state import State
from dvae.models.paths import GuidePath, PriorPath
from dvae.nn import Emitter, StepPosterior


class VAE(DynamicalVAE):
    name = "vae"
    markov_history = 0  # no step depends on another

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        self.emitter = Emitter(c.z_dim, c.x_dim, c.emission_dim, c.likelihood, c.emission_scale)  # p(x_t | z_t)
        self.encoder = StepPosterior(self.x_in_dim, c.rnn_dim, c.z_dim)  # q(z_t | x_t)

    def _standard_normal(self, batch: SequenceBatch, *shape):
        """loc 0 and scale 1 of the prior N(0, I), on the batch's device and dtype: ``shape + (z_dim,)``."""
        loc = batch.x.new_zeros(shape + (self.config.z_dim,))
        return loc, torch.ones_like(loc)

    # --- the contract: no dynamics ------------------------------------------------------------------
    def _standard_normal_dist(self, n: int):
        loc = torch.zeros(n, self.config.z_dim, **self.tensor_kind)  # (n, z_dim)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def initial_state(self, n: int, c=None):
        """p(z_0) = N(0, I); nothing else in the state."""
        return {}, self._standard_normal_dist(n)

    def transition_step(self, state: State, x, u=None, obs_mask=None):
        """p(z_t) = N(0, I), whatever came before."""
        return {}, self._standard_normal_dist(state["z"].shape[0])

    def emission(self, state: State, obs_mask=None):
        """p(x_t | z_t)."""
        return observation_dist(self.emitter(state["z"]), self.config.likelihood, obs_mask)

    @torch.no_grad()
    def posterior_last(self, batch: SequenceBatch):
        """Nothing carries over to the next step: the state is the last real step's posterior mean of
        z_t (no draw, so a prediction is the same marginal, draw for draw, whatever the context)."""
        batch = self.check_batch(batch)
        loc, _ = self.encoder(self.x_input(batch.x, batch.obs_mask))  # (B, T, z_dim)
        rows, last = torch.arange(batch.batch_size, device=loc.device), (batch.lengths - 1).clamp(min=0)
        return {"z": loc[rows, last]}, batch.x[rows, last]

    # --- the per-step guide ------------------------------------------------------------------------
    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x) = prod_t q(z_t | x_t). Returns the sampled latent path (B, T, z_dim)."""
        pyro.module("vae", self)
        B, T = batch.batch_size, batch.num_steps
        loc, scale = self.encoder(self.x_input(batch.x, batch.obs_mask))  # (B, T, z_dim) each
        loc_t, scale_t = loc.unbind(1), scale.unbind(1)  # T tensors (B, z_dim): unbind, not loc[:, t]
        zs = []
        with pyro.plate("sequences", B, dim=-1):
            for t in pyro.markov(range(T), history=0):
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", dist.Normal(loc_t[t], scale_t[t]).to_event(1).mask(batch.mask[:, t]))
                zs.append(z)
        return torch.stack(zs, 1)  # (B, T, z_dim)

    # --- the same densities along a whole path (the time-vectorized program) -------------------------
    def prior_path(self, batch: SequenceBatch) -> PriorPath:
        """prod_t N(z_t; 0, I) over the path."""
        B, T = batch.batch_size, batch.num_steps
        return PriorPath(lambda z: self._standard_normal(batch, B, T), (B, T, self.config.z_dim), batch.mask,
                         step=lambda t, z_prev: self._standard_normal(batch, B))

    def emission_path(self, batch: SequenceBatch, z):
        """p(x_t | z_t) of every step: batch (B, T)."""
        return observation_dist(self.emitter(z), self.config.likelihood, batch.obs_mask)

    def guide_path(self, batch: SequenceBatch):
        """Draw a path from q(z | x), plain torch: (loc, scale, path), each (B, T, z_dim), with the
        same normals in the same order as :meth:`guide` (one (B, z_dim) block per step)."""
        B, T = batch.batch_size, batch.num_steps
        loc, scale = self.encoder(self.x_input(batch.x, batch.obs_mask))  # (B, T, z_dim) each
        eps = loc.new_empty(T, B, self.config.z_dim)
        for t in range(T):  # as Normal.rsample at each step of the per-step guide
            eps[t].normal_()
        return loc, scale, loc + eps.transpose(0, 1) * scale

    def posterior_path(self, batch: SequenceBatch) -> GuidePath:
        """The guide's path: q(z_t | x_t) at every step, drawn as :meth:`guide` draws it."""
        loc, scale, path = self.guide_path(batch)
        return GuidePath(loc, scale, path, batch.mask)
