"""The variational RNN (Chung et al. 2015), with controls.

A deterministic recurrence h_t = f(phi_x(x_t), phi_z(z_t), u_t, h_{t-1}) carries the history;
the latent at each step is drawn from a prior that reads it::

    z_t ~ N(Prior(h_{t-1}))
    x_t ~ Emitter(phi_z(z_t), h_{t-1})
    h_t = f(phi_x(x_t), phi_z(z_t), u_t, h_{t-1})

Guide: q(z_t | x_t, h_{t-1}) = N(Posterior(phi_x(x_t), h_{t-1})), filtering, sharing f with the model.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro import poutine

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, observation_dist
from dvae.nn import Emitter, GaussianHead, Recurrence


class VRNN(DynamicalVAE):
    name = "vrnn"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        feat = c.emission_dim
        self.phi_x = nn.Sequential(nn.Linear(c.x_dim, feat), nn.ReLU())  # features of x_t
        self.phi_z = nn.Sequential(nn.Linear(c.z_dim, feat), nn.ReLU())  # features of z_t
        self.prior = GaussianHead(c.rnn_dim, c.transition_dim, c.z_dim)  # p(z_t | h_{t-1})
        self.posterior = GaussianHead(feat + c.rnn_dim, c.transition_dim, c.z_dim)  # q(z_t | x_t, h_{t-1})
        self.emitter = Emitter(feat + c.rnn_dim, c.x_dim, c.emission_dim, c.likelihood)  # p(x_t | z_t, h_{t-1})
        self.recurrence = Recurrence(c.rnn_type, 2 * feat + c.u_dim, c.rnn_dim)  # h_t

    def _step(self, x_t, z_t, u_t, state):
        parts = [self.phi_x(x_t), self.phi_z(z_t)] + ([] if u_t is None else [u_t])
        return self.recurrence(torch.cat(parts, -1), state)

    def model(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, z | u). Returns the latent path (B, T, z_dim)."""
        pyro.module("vrnn", self)
        B, T = batch.batch_size, batch.num_steps
        state, zs = self.recurrence.initial(B), []
        with pyro.plate("sequences", B, dim=-1):
            for t in pyro.markov(range(T)):
                m, h = batch.mask[:, t], Recurrence.output(state)
                loc, scale = self.prior(h)
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", dist.Normal(loc, scale).to_event(1).mask(m))  # (B, z_dim)
                x_params = self.emitter(torch.cat([self.phi_z(z), h], -1))
                x = pyro.sample(f"x_{t}", observation_dist(x_params, self.config.likelihood).mask(m),
                                obs=batch.x[:, t])  # (B, x_dim)
                state = self._step(x, z, self._u(batch, t), state)
                zs.append(z)
        return torch.stack(zs, 1)  # (B, T, z_dim)

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u), filtering. Returns the sampled latent path (B, T, z_dim)."""
        pyro.module("vrnn", self)
        B, T = batch.batch_size, batch.num_steps
        state, zs = self.recurrence.initial(B), []
        with pyro.plate("sequences", B, dim=-1):
            for t in pyro.markov(range(T)):
                x = batch.x[:, t]
                loc, scale = self.posterior(torch.cat([self.phi_x(x), Recurrence.output(state)], -1))
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", dist.Normal(loc, scale).to_event(1).mask(batch.mask[:, t]))
                state = self._step(x, z, self._u(batch, t), state)
                zs.append(z)
        return torch.stack(zs, 1)  # (B, T, z_dim)

    def _predict_samples(self, context: SequenceBatch, u_future, horizon: int):
        N, C = context.batch_size, context.num_steps
        z_path = self.guide(context)  # (N, C, z_dim)
        last = (context.lengths - 1).clamp(min=0)
        state = self.recurrence.initial(N)
        for t in range(C):  # rebuild h along the context; the last real step takes u_future[:, 0]
            u_t = self._u(context, t)
            if u_t is not None:
                u_t = torch.where((last == t)[:, None], u_future[:, 0], u_t)
            new = self._step(context.x[:, t], z_path[:, t], u_t, state)
            keep = (t <= last)[:, None]  # freeze the state after each sequence's context
            state = tuple(torch.where(keep, a, b) for a, b in zip(new, state)) if isinstance(new, tuple) \
                else torch.where(keep, new, state)
        xs, means, zs = [], [], []
        for k in range(horizon):
            h = Recurrence.output(state)
            loc, scale = self.prior(h)
            z = dist.Normal(loc, scale).sample()  # (N, z_dim)
            x_dist = observation_dist(self.emitter(torch.cat([self.phi_z(z), h], -1)), self.config.likelihood)
            x = x_dist.sample()
            u_k = None if u_future is None else (u_future[:, k + 1] if k + 1 < horizon else torch.zeros_like(u_future[:, 0]))
            state = self._step(x, z, u_k, state)
            xs.append(x), means.append(x_dist.mean), zs.append(z)
        return {"x": torch.stack(xs, 1), "x_mean": torch.stack(means, 1), "z": torch.stack(zs, 1)}  # (N, H, .)
