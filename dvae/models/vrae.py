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

The seeds' decoder (``ModelConfig.vrae_decoder = "feedback"``; Fabius & van Amersfoort's form, the
decoder fed its previous output, with z at every step)::

    z ~ N(0, I)
    s_{-1} = tanh(W [z, c])
    s_t = RNN_dec([x_{t-1}, z, u_{t-1}, c], s_{t-1})     x_{-1} = 0, u_{-1} = 0
    x_t ~ Emitter(s_t)

Trained with teacher forcing (x_{t-1} the observed step; missing entries read as 0, with the mask
beside them in ``config.missing`` mode, as the VRNN's recurrence reads them); in generation and
prediction the decoder reads its own previous sample. The per-step ``model`` of this form runs the
contract step by step (the x_t it feeds forward is the site's value: observed when conditioned, drawn
when not), so ``generate`` feeds back; the vectorized form scores every step in one decoder call
(teacher forcing), a scoring program only. The controls-only decoder (``"controls"``) is the default:
it keeps the runs and checkpoints made before the option, and its generation does not compound its
own errors; docs/models.md compares the two.

As the contract of :class:`~dvae.models.base.DynamicalVAE` states it, the state is the code z (the
same at every step: ``transition_step`` gives a point mass at the previous step's code), the condition
c and the decoder's state s_t: ``initial_state`` is p(z) = N(0, I), ``with_latent`` starts the decoder
from the code at step 0, ``transition_step`` runs the decoder one step on u_{t-1}, and ``emission``
reads s_t. Prediction, the world model and the particle filter are written over those; the latent path
of a sequence (``latent_path``) is its code at every step.

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
from dvae.models.state import State
from dvae.nn import Emitter, GaussianHead, SequenceEncoder, make_rnn, run_rnn


class VRAE(DynamicalVAE):
    name = "vrae"
    conditional = True
    bidirectional_encoder = True
    sequence_code = "z"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        self.encoder = SequenceEncoder(self.x_in_dim + c.u_dim + c.c_dim, c.rnn_dim, c.rnn_type,
                                       "bidirectional" if c.bidirectional else "forward")
        self.posterior = GaussianHead(self.encoder.out_dim, c.transition_dim, c.z_dim)  # q(z | x, u, c)
        if c.vrae_decoder not in ("controls", "feedback"):
            raise ValueError(f"unknown vrae_decoder {c.vrae_decoder!r} (choose controls or feedback)")
        self.feedback = c.vrae_decoder == "feedback"
        self.z_to_state = nn.Linear(c.z_dim + c.c_dim, c.rnn_dim)  # s_0 = tanh(W [z, c])
        dec_in = (self.x_in_dim + c.z_dim + c.u_dim) if self.feedback else max(c.u_dim, 1)
        self.decoder = make_rnn(c.rnn_type, dec_in + c.c_dim, c.rnn_dim)  # s_t
        self.emitter = Emitter(c.rnn_dim, c.x_dim, c.emission_dim, c.likelihood, c.emission_scale)  # p(x_t | s_t)

    def _decode(self, z, u_prev, c=None, x_prev=None):
        """Decoder states (N, T, rnn_dim) from z (N, z_dim), the shifted controls (N, T, u_in), the
        condition c (N, c_dim) or None and, for the feedback decoder, the shifted observations
        x_prev (N, T, x_in_dim) (teacher forcing)."""
        code = z if c is None else torch.cat([z, c], -1)  # (N, z_dim + c_dim)
        s_0 = torch.tanh(self.z_to_state(code))[None]  # (1, N, rnn_dim)
        init = (s_0, torch.zeros_like(s_0)) if isinstance(self.decoder, nn.LSTM) else s_0
        inp = u_prev
        if self.feedback:  # [x_{t-1}, z, u_{t-1}]: (N, T, x_in_dim + z_dim + u_dim)
            parts = [x_prev, z[:, None].expand(z.shape[0], x_prev.shape[1], z.shape[-1])]
            inp = torch.cat(parts + ([u_prev] if self.config.u_dim else []), -1)
        return run_rnn(self.decoder, append_condition(inp, c), init)

    def _shifted_observations(self, batch: SequenceBatch):
        """What the feedback decoder reads at every step, x_{t-1} (zeros at t = 0): (B, T, x_in_dim)."""
        y = self.x_input(batch.x, batch.obs_mask)  # (B, T, x_in_dim)
        return torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], 1)

    def _shifted_controls(self, batch: SequenceBatch):
        """u_{t-1} for every step (zeros at t = 0, and everywhere when uncontrolled): (B, T, u_in)."""
        B, T = batch.batch_size, batch.num_steps
        if batch.u is None:
            return batch.x.new_zeros(B, T, 1)
        return torch.cat([batch.u.new_zeros(B, 1, batch.u_dim), batch.u[:, :-1]], 1)

    def posterior_params(self, batch: SequenceBatch):
        """loc, scale (B, z_dim) of q(z | x, u, c)."""
        y = self.encoder_input(batch)  # (B, T, x_in_dim + u_dim)
        return self.posterior(self.encoder.final(append_condition(y, self.condition(batch)), batch.lengths))

    def code_posterior(self, batch: SequenceBatch):
        """q(z | x, u, c) of the sequence code ``"z"``: :meth:`posterior_params`."""
        return self.posterior_params(batch)

    # --- the contract: one code, a decoder run step by step ------------------------------------------
    def initial_state(self, n: int, c=None):
        """p(z) = N(0, I): the code, drawn before the first step; the state carries c."""
        loc = torch.zeros(n, self.config.z_dim, **self.tensor_kind)  # (n, z_dim)
        return {"c": c}, dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def _decoder_step(self, state: State, u_prev, hidden, x_prev=None) -> State:
        """s_t = RNN_dec([u_{t-1}, c], s_{t-1}) (feedback: RNN_dec([x_{t-1}, z, u_{t-1}, c], s_{t-1}), x_prev
        (n, x_in_dim)): the decoder's hidden state is kept batch first."""
        n = state["z"].shape[0]
        if self.feedback:
            inp = torch.cat([x_prev, state["z"]] + ([u_prev] if self.config.u_dim else []), -1)
        else:
            inp = state["z"].new_zeros(n, 1) if u_prev is None else u_prev  # (n, u_in)
        c = state.get("c")
        inp = inp if c is None else torch.cat([inp, c], -1)  # (n, dec_in + c_dim)
        out, hidden = self.decoder(inp[:, None], tuple(h[None] for h in hidden) if isinstance(hidden, tuple)
                                   else hidden[None])  # hidden (1, n, rnn_dim)
        hidden = tuple(h[0] for h in hidden) if isinstance(hidden, tuple) else hidden[0]  # (n, rnn_dim)
        return {**state, "h": hidden, "s": out[:, 0]}

    def with_latent(self, state: State, z) -> State:
        """At step 0 the decoder starts from the code, s_{-1} = tanh(W [z, c]), and reads u_{-1} = 0."""
        if "h" in state:  # later steps: the code is unchanged
            return {**state, "z": z}
        c = state.get("c")
        s_init = torch.tanh(self.z_to_state(z if c is None else torch.cat([z, c], -1)))  # (n, rnn_dim)
        hidden = (s_init, torch.zeros_like(s_init)) if isinstance(self.decoder, nn.LSTM) else s_init
        u_dim = self.config.u_dim if self.feedback else max(self.config.u_dim, 1)
        x_prev = z.new_zeros(z.shape[0], self.x_in_dim) if self.feedback else None  # x_{-1} = 0
        return self._decoder_step({**state, "z": z}, z.new_zeros(z.shape[0], u_dim), hidden, x_prev)

    def transition_step(self, state: State, x, u=None, obs_mask=None):
        """s_t = RNN_dec([u_{t-1}, c], s_{t-1}) (feedback: also x_{t-1} and z); the code carries over (a
        point mass)."""
        x_prev = self.x_input(x, obs_mask) if self.feedback else None
        new = self._decoder_step(state, u, state["h"], x_prev)
        return new, dist.Delta(state["z"], event_dim=1)

    def emission(self, state: State, obs_mask=None):
        """p(x_t | s_t)."""
        return observation_dist(self.emitter(state["s"]), self.config.likelihood, obs_mask)

    def latent_path(self, batch: SequenceBatch):
        """The guide's code, at every step: (B, T, z_dim)."""
        z = self.guide(batch)  # (B, z_dim)
        return z[:, None].expand(batch.batch_size, batch.num_steps, z.shape[-1])

    # --- the Pyro programs: one code per sequence --------------------------------------------------
    def model(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, z | u). Returns z (B, z_dim)."""
        if self.feedback:
            return self._model_feedback(batch, annealing_factor)
        pyro.module("vrae", self)
        B, T = batch.batch_size, batch.num_steps
        with pyro.plate("sequences", B, dim=-1):
            zeros = batch.x.new_zeros(B, self.config.z_dim)
            with poutine.scale(scale=annealing_factor):
                z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))  # (B, z_dim)
            s = self.decoder_states(batch, z).unbind(1)  # T tensors (B, rnn_dim): unbind, not s[:, t]
            for t in pyro.markov(range(T)):
                pyro.sample(f"x_{t}", observation_dist(self.emitter(s[t]), self.config.likelihood,
                                                       batch.step_obs_mask(t)).mask(batch.mask[:, t]), obs=batch.x[:, t])
        return z

    def _model_feedback(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """The feedback decoder's p(x, z | u), step by step over the contract: the decoder reads the
        value of the previous step's site (observed, or drawn when unconditioned). Returns z (B, z_dim)."""
        pyro.module("vrae", self)
        B, T = batch.batch_size, batch.num_steps
        with pyro.plate("sequences", B, dim=-1):
            state, p_z = self.initial_state(B, self.condition(batch))
            with poutine.scale(scale=annealing_factor):
                z = pyro.sample("z", p_z)  # (B, z_dim)
            state = self.with_latent(state, z)
            for t in pyro.markov(range(T)):
                if t > 0:
                    state, _ = self.transition_step(state, x, batch.step_u(t - 1), batch.step_obs_mask(t - 1))
                x = pyro.sample(f"x_{t}", self.emission(state, batch.step_obs_mask(t)).mask(batch.mask[:, t]),
                                obs=batch.x[:, t])  # (B, x_dim)
        return z

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u). Returns z (B, z_dim)."""
        pyro.module("vrae", self)
        loc, scale = self.posterior_params(batch)
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            with poutine.scale(scale=annealing_factor):
                return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # --- the same densities in one call each (the time-vectorized program) ----------------------------
    def prior_path(self, batch: SequenceBatch):
        """p(z) = N(0, I): batch (B,), event (z_dim,)."""
        zeros = batch.x.new_zeros(batch.batch_size, self.config.z_dim)
        return dist.Normal(zeros, 1.0).to_event(1)

    def decoder_states(self, batch: SequenceBatch, z):
        """s_t of every step (B, T, rnn_dim): the decoder run from the code z (B, z_dim) on u_{t-1} and c
        (feedback: and on the observed x_{t-1}, teacher forcing)."""
        x_prev = self._shifted_observations(batch) if self.feedback else None
        return self._decode(z, self._shifted_controls(batch), self.condition(batch), x_prev)

    def emission_path(self, batch: SequenceBatch, z):
        """p(x_t | s_t) of every step, the decoder run from the code z (B, z_dim): batch (B, T)."""
        return observation_dist(self.emitter(self.decoder_states(batch, z)), self.config.likelihood, batch.obs_mask)

    def posterior_path(self, batch: SequenceBatch):
        """q(z | x, u, c): batch (B,), event (z_dim,)."""
        loc, scale = self.posterior_params(batch)
        return dist.Normal(loc, scale).to_event(1)

    def guide_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u): the per-step guide already has one site."""
        return self.guide(batch, annealing_factor)
