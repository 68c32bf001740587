"""The Deep Markov Model / Deep Kalman Filter with controls (Krishnan et al. 2015, 2017).

Generative story, for each sequence::

    z_0 ~ N(loc_0, scale_0)                          learned initial state
    z_t ~ N(Transition(z_{t-1}, u_{t-1}))            t = 1 .. T-1
    x_t ~ Emitter(z_t)                               Gaussian (learned diagonal scale) or Bernoulli

Guide (structured, "DKS"): a backward RNN reads (x_t, u_t) from the end, giving h_t, a summary of
x_{t:T}; q(z_t | z_{t-1}, h_t) is the Combiner. The mean-field variant drops z_{t-1}.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, observation_dist
from dvae.nn import Combiner, Emitter, GatedTransition, InitialState, SequenceEncoder


class DMM(DynamicalVAE):
    name = "dmm"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        if c.guide not in ("dks", "mean_field"):
            raise ValueError(f"unknown DMM guide {c.guide!r} (choose dks or mean_field)")
        self.initial = InitialState(c.z_dim)                                   # p(z_0)
        self.transition = GatedTransition(c.z_dim, c.u_dim, c.transition_dim)  # p(z_t | z_{t-1}, u_{t-1})
        self.emitter = Emitter(c.z_dim, c.x_dim, c.emission_dim, c.likelihood)  # p(x_t | z_t)
        self.encoder = SequenceEncoder(c.x_dim + c.u_dim, c.rnn_dim, c.rnn_type, "backward")  # h_t
        self.combiner = Combiner(c.z_dim, c.rnn_dim, mean_field=c.guide == "mean_field")  # q(z_t | z_{t-1}, h_t)
        self.z_q_0 = torch.nn.Parameter(torch.zeros(c.z_dim))  # the guide's z_{-1}

    def _prior(self, t: int, z_prev, batch: SequenceBatch):
        if t == 0:
            return self.initial(batch.batch_size)
        return self.transition(z_prev, self._u(batch, t - 1))

    def model(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, z | u). Returns the latent path (B, T, z_dim)."""
        pyro.module("dmm", self)
        B, T = batch.batch_size, batch.num_steps
        z, zs = None, []
        with pyro.plate("sequences", B, dim=-1):
            for t in pyro.markov(range(T)):
                m = batch.mask[:, t]  # (B,)
                loc, scale = self._prior(t, z, batch)  # (B, z_dim) each
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", dist.Normal(loc, scale).to_event(1).mask(m))  # (B, z_dim)
                pyro.sample(f"x_{t}", observation_dist(self.emitter(z), self.config.likelihood).mask(m),
                            obs=batch.x[:, t])
                zs.append(z)
        return torch.stack(zs, 1)  # (B, T, z_dim)

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u). Returns the sampled latent path (B, T, z_dim)."""
        pyro.module("dmm", self)
        B, T = batch.batch_size, batch.num_steps
        y = batch.x if batch.u is None else torch.cat([batch.x, batch.u], -1)  # (B, T, x_dim + u_dim)
        h = self.encoder(y, batch.lengths)  # (B, T, rnn_dim)
        z, zs = self.z_q_0.expand(B, -1), []
        with pyro.plate("sequences", B, dim=-1):
            for t in pyro.markov(range(T)):
                loc, scale = self.combiner(z, h[:, t])
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", dist.Normal(loc, scale).to_event(1).mask(batch.mask[:, t]))
                zs.append(z)
        return torch.stack(zs, 1)  # (B, T, z_dim)

    def _predict_samples(self, context: SequenceBatch, u_future, horizon: int):
        z_path = self.guide(context)  # (N, C, z_dim)
        N = context.batch_size
        z = z_path[torch.arange(N, device=z_path.device), (context.lengths - 1).clamp(min=0)]  # (N, z_dim)
        xs, means, zs = [], [], []
        for k in range(horizon):
            loc, scale = self.transition(z, None if u_future is None else u_future[:, k])
            z = dist.Normal(loc, scale).sample()  # (N, z_dim)
            x_dist = observation_dist(self.emitter(z), self.config.likelihood)
            xs.append(x_dist.sample())
            means.append(x_dist.mean)
            zs.append(z)
        return {"x": torch.stack(xs, 1), "x_mean": torch.stack(means, 1), "z": torch.stack(zs, 1)}  # (N, H, .)
