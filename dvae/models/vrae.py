"""The variational recurrent autoencoder (Fabius & van Amersfoort 2014), with controls.

One latent code per sequence::

    z ~ N(0, I)
    s_0 = tanh(W z)                           the decoder RNN starts from z
    s_t = RNN_dec(u_{t-1}, s_{t-1})           fed the controls (zeros when uncontrolled)
    x_t ~ Emitter(s_t)

Guide: an encoder RNN reads (x_t, u_t) forward; its state at the last real step gives q(z | x, u).
With ``bidirectional=True`` a backward RNN reads the sequence too, and q(z | x, u) reads the forward
state at the last real step and the backward state at the first.

Conditional VRAE (``c_dim`` > 0; Sohn et al. 2015's CVAE on sequences): a per-sequence condition c is
concatenated to the encoder's input at every step, to the latent code and to the decoder's input::

    z ~ N(0, I)                               the prior does not depend on c
    s_0 = tanh(W [z, c])
    s_t = RNN_dec([u_{t-1}, c], s_{t-1})
    x_t ~ Emitter(s_t)
    guide: the encoder reads [x_t, u_t, c]: q(z | x, u, c)

The time-vectorized form (``model_vectorized``/``guide_vectorized``) differs only in the observations:
one site ``"x"`` (B, T, x_dim) scored with one emitter call over every step; ``"z"`` is one site in
both forms, and ``guide_vectorized`` is ``guide``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro import poutine

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, append_condition, observation_dist
from dvae.models.paths import observation_path
from dvae.nn import Emitter, GaussianHead, SequenceEncoder, make_rnn, run_rnn


class VRAE(DynamicalVAE):
    name = "vrae"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        self.encoder = SequenceEncoder(self.x_in_dim + c.u_dim + c.c_dim, c.rnn_dim, c.rnn_type,
                                       "bidirectional" if c.bidirectional else "forward")
        self.posterior = GaussianHead(self.encoder.out_dim, c.transition_dim, c.z_dim)  # q(z | x, u, c)
        self.z_to_state = nn.Linear(c.z_dim + c.c_dim, c.rnn_dim)  # s_0 = tanh(W [z, c])
        self.decoder = make_rnn(c.rnn_type, max(c.u_dim, 1) + c.c_dim, c.rnn_dim)  # s_t
        self.emitter = Emitter(c.rnn_dim, c.x_dim, c.emission_dim, c.likelihood)  # p(x_t | s_t)

    def _decode(self, z, u_prev, c=None):
        """Decoder states (N, T, rnn_dim) from z (N, z_dim), the shifted controls (N, T, u_in) and the
        condition c (N, c_dim) or None."""
        code = z if c is None else torch.cat([z, c], -1)  # (N, z_dim + c_dim)
        s_0 = torch.tanh(self.z_to_state(code))[None]  # (1, N, rnn_dim)
        init = (s_0, torch.zeros_like(s_0)) if isinstance(self.decoder, nn.LSTM) else s_0
        return run_rnn(self.decoder, append_condition(u_prev, c), init)

    def _shifted_controls(self, batch: SequenceBatch):
        """u_{t-1} for every step (zeros at t = 0, and everywhere when uncontrolled): (B, T, u_in)."""
        B, T = batch.batch_size, batch.num_steps
        if batch.u is None:
            return batch.x.new_zeros(B, T, 1)
        return torch.cat([batch.u.new_zeros(B, 1, batch.u_dim), batch.u[:, :-1]], 1)

    def posterior_params(self, batch: SequenceBatch):
        """loc, scale (B, z_dim) of q(z | x, u, c)."""
        y = self.encoder_input(batch)  # (B, T, x_in_dim + u_dim)
        return self.posterior(self.encoder.final(append_condition(y, self._c(batch)), batch.lengths))

    def model(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, z | u). Returns z (B, z_dim)."""
        pyro.module("vrae", self)
        B, T = batch.batch_size, batch.num_steps
        with pyro.plate("sequences", B, dim=-1):
            zeros = batch.x.new_zeros(B, self.config.z_dim)
            with poutine.scale(scale=annealing_factor):
                z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))  # (B, z_dim)
            s = self._decode(z, self._shifted_controls(batch), self._c(batch))  # (B, T, rnn_dim)
            for t in pyro.markov(range(T)):
                pyro.sample(f"x_{t}", observation_dist(self.emitter(s[:, t]), self.config.likelihood,
                                                       self._obs_mask(batch, t)).mask(batch.mask[:, t]), obs=batch.x[:, t])
        return z

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u). Returns z (B, z_dim)."""
        pyro.module("vrae", self)
        loc, scale = self.posterior_params(batch)
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            with poutine.scale(scale=annealing_factor):
                return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def model_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, z | u) with the observations of every step as one site. Returns z (B, z_dim)."""
        pyro.module("vrae", self)
        B = batch.batch_size
        with pyro.plate("sequences", B, dim=-1):
            zeros = batch.x.new_zeros(B, self.config.z_dim)
            with poutine.scale(scale=annealing_factor):
                z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))  # (B, z_dim)
            s = self._decode(z, self._shifted_controls(batch), self._c(batch))  # (B, T, rnn_dim)
            x_dist = observation_dist(self.emitter(s), self.config.likelihood, batch.obs_mask)  # batch (B, T)
            pyro.sample("x", observation_path(x_dist, batch.mask), obs=batch.x)
        return z

    def guide_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u): the per-step guide already has one site."""
        return self.guide(batch, annealing_factor)

    def _predict_samples(self, context: SequenceBatch, u_future, horizon: int):
        N, C = context.batch_size, context.num_steps
        z = self.guide(context)  # (N, z_dim)
        rows = torch.arange(N, device=z.device)[:, None]
        steps = (context.lengths[:, None] + torch.arange(horizon, device=z.device)[None])  # (N, H) predicted
        if u_future is None:
            u_prev = z.new_zeros(N, C + horizon, 1)
        else:  # u_{t-1} for t = 1 .. C + H - 1, with u_future placed after each context
            u_full = torch.cat([context.u, u_future.new_zeros(N, horizon, u_future.shape[-1])], 1)
            u_full[rows, steps - 1] = u_future
            u_prev = torch.cat([u_full.new_zeros(N, 1, u_full.shape[-1]), u_full[:, :-1]], 1)  # (N, C+H, u_dim)
        s = self._decode(z, u_prev, self._c(context))[rows, steps]  # (N, H, rnn_dim)
        x_dist = observation_dist(self.emitter(s), self.config.likelihood)
        z_rep = z[:, None].expand(N, horizon, z.shape[-1])
        return {"x": x_dist.sample(), "x_mean": x_dist.mean, "z": z_rep}
