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
from dvae.models.paths import GuidePath, PriorPath, observation_path
from dvae.nn import Emitter, StepPosterior


class VAE(DynamicalVAE):
    name = "vae"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        self.emitter = Emitter(c.z_dim, c.x_dim, c.emission_dim, c.likelihood)  # p(x_t | z_t)
        self.encoder = StepPosterior(self.x_in_dim, c.rnn_dim, c.z_dim)  # q(z_t | x_t)

    def _standard_normal(self, batch: SequenceBatch, *shape):
        """loc 0 and scale 1 of the prior N(0, I), on the batch's device and dtype: ``shape + (z_dim,)``."""
        loc = batch.x.new_zeros(shape + (self.config.z_dim,))
        return loc, torch.ones_like(loc)

    # --- the per-step program ----------------------------------------------------------------------
    def model(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, z) = prod_t N(z_t; 0, I) p(x_t | z_t). Returns the latent path (B, T, z_dim)."""
        pyro.module("vae", self)
        B, T = batch.batch_size, batch.num_steps
        loc, scale = self._standard_normal(batch, B)  # (B, z_dim) each
        zs = []
        with pyro.plate("sequences", B, dim=-1):
            for t in pyro.markov(range(T), history=0):  # independent steps
                m = batch.mask[:, t]  # (B,)
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", dist.Normal(loc, scale).to_event(1).mask(m))  # (B, z_dim)
                pyro.sample(f"x_{t}", observation_dist(self.emitter(z), self.config.likelihood,
                                                       self._obs_mask(batch, t)).mask(m), obs=batch.x[:, t])
                zs.append(z)
        return torch.stack(zs, 1)  # (B, T, z_dim)

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x) = prod_t q(z_t | x_t). Returns the sampled latent path (B, T, z_dim)."""
        pyro.module("vae", self)
        B, T = batch.batch_size, batch.num_steps
        loc, scale = self.encoder(self.x_input(batch.x, batch.obs_mask))  # (B, T, z_dim) each
        zs = []
        with pyro.plate("sequences", B, dim=-1):
            for t in pyro.markov(range(T), history=0):
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", dist.Normal(loc[:, t], scale[:, t]).to_event(1).mask(batch.mask[:, t]))
                zs.append(z)
        return torch.stack(zs, 1)  # (B, T, z_dim)

    # --- the time-vectorized program ---------------------------------------------------------------
    def model_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, z) with the path and the observations as one site each. Returns the path (B, T, z_dim)."""
        pyro.module("vae", self)
        B, T, z_dim = batch.batch_size, batch.num_steps, self.config.z_dim
        prior = PriorPath(lambda z: self._standard_normal(batch, B, T), (B, T, z_dim), batch.mask,
                          step=lambda t, z_prev: self._standard_normal(batch, B))
        with pyro.plate("sequences", B, dim=-1):
            with poutine.scale(scale=annealing_factor):
                z = pyro.sample("z", prior)  # (B, T, z_dim)
            x_dist = observation_dist(self.emitter(z), self.config.likelihood, batch.obs_mask)  # batch (B, T)
            pyro.sample("x", observation_path(x_dist, batch.mask), obs=batch.x)
        return z

    def guide_path(self, batch: SequenceBatch):
        """Draw a path from q(z | x), plain torch: (loc, scale, path), each (B, T, z_dim), with the
        same normals in the same order as :meth:`guide` (one (B, z_dim) block per step)."""
        B, T = batch.batch_size, batch.num_steps
        loc, scale = self.encoder(self.x_input(batch.x, batch.obs_mask))  # (B, T, z_dim) each
        eps = loc.new_empty(T, B, self.config.z_dim)
        for t in range(T):  # as Normal.rsample at each step of the per-step guide
            eps[t].normal_()
        return loc, scale, loc + eps.transpose(0, 1) * scale

    def guide_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x) with the path as one site. Returns the sampled latent path (B, T, z_dim)."""
        pyro.module("vae", self)
        loc, scale, path = self.guide_path(batch)
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            with poutine.scale(scale=annealing_factor):
                return pyro.sample("z", GuidePath(loc, scale, path, batch.mask))

    # --- prediction: the marginal, whatever the context --------------------------------------------
    def _predict_samples(self, context: SequenceBatch, u_future, horizon: int):
        N = context.batch_size
        loc, scale = self._standard_normal(context, N, horizon)  # (N, H, z_dim) each
        z = dist.Normal(loc, scale).sample()  # (N, H, z_dim): from the prior, the context is not used
        x_dist = observation_dist(self.emitter(z), self.config.likelihood)  # batch (N, H)
        return {"x": x_dist.sample(), "x_mean": x_dist.mean, "z": z}
