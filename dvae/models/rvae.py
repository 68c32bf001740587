"""The recurrent VAE (RVAE; Leglaive, Alameda-Pineda, Girin and Horaud 2020), causal and non-causal,
with controls.

Independent latents, and an RNN over them that carries the dependencies between the observations::

    z_t ~ N(0, I)                                          i.i.d., t = 0 .. T-1
    causal:      h_t = RNN([z_t, u_{t-1}], h_{t-1})          h_{-1} learned, u_{-1} = 0
                 x_t ~ Emitter(h_t)                          p(x_t | z_{0:t}, u_{0:t-1})
    non-causal:  h_t = [RNN_fwd([z_t, u_{t-1}])_t, RNN_bwd([z_t, u_{t-1}])_t]
                 x_t ~ Emitter(h_t)                          p(x_t | z_{0:T-1}, u)

Guide (both forms): q(z_t | z_{0:t-1}, x, u) = N(Head([g_t, k_{t-1}])), with k_t = RNN_z(z_t, k_{t-1})
a forward RNN over the drawn latents (k_{-1} learned) and g_t an RNN over [x_t, u_{t-1}]:
backward for the causal form (g_t reads x_{t:T-1}: given z_{0:t-1}, the causal model makes z_t
independent of x_{0:t-1}, so q(z_t | z_{0:t-1}, x_{t:T-1}, u) has the exact posterior's conditioning
set), bidirectional for the non-causal one (x_{0:t-1} depends on z_t through the backward RNN, so
g_t reads the whole x).

**The contract.** The causal form is a forward state-space model: the state is the decoder's
recurrence h_{t-1} (``"rec"``) and the control u_{t-1} waiting to enter it (``"u"``); ``initial_state``
and ``transition_step`` give p(z_t) = N(0, I) (the transition ignores x: the model never reads its
observations), ``with_latent`` runs h_t = RNN([z_t, u_{t-1}], h_{t-1}), ``emission`` is p(x_t | h_t).
The base per-step ``model``, ``generate``, ``predict``, the world model and the particle filter are
written over those. The non-causal form is NOT a forward model (x_t depends on z_{t+1:T-1}): it trains,
evaluates (ELBO, IW bound), generates (all of z drawn first, then decoded in one call), reconstructs,
encodes and imputes; step-by-step use (``predict``, the world model and ``dvae plan``, the particle
filter) is refused with a ValueError naming why (``step_by_step_problem``).

Per-step and time-vectorized programs: ``model``/``guide`` have one site per step; the path densities
(``prior_path``, ``posterior_path``, ``emission_path``) give the vectorized form, the decoder run over
the whole path in one call. Both guides draw the same normals in the same order.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro import poutine

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, observation_dist
from dvae.models.paths import GuidePath, PriorPath
from dvae.models.state import State
from dvae.nn import Emitter, GaussianHead, Recurrence, SequenceEncoder, make_rnn, reverse_padded, run_rnn


def shifted_controls(batch: SequenceBatch):
    """u_{t-1} at every step (zeros at t = 0): (B, T, u_dim), or None for an uncontrolled batch."""
    if batch.u is None:
        return None
    return torch.cat([torch.zeros_like(batch.u[:, :1]), batch.u[:, :-1]], 1)


class RVAE(DynamicalVAE):
    name = "rvae"
    default_lr = 3e-3

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        self.causal = c.rvae_causal
        self.decoder = Recurrence(c.rnn_type, c.z_dim + c.u_dim, c.rnn_dim)  # h_t (forward)
        self.decoder_back = None if self.causal else make_rnn(c.rnn_type, c.z_dim + c.u_dim, c.rnn_dim)
        h_dim = c.rnn_dim * (1 if self.causal else 2)
        self.emitter = Emitter(h_dim, c.x_dim, c.emission_dim, c.likelihood, c.emission_scale)  # p(x_t | h_t)
        self.encoder = SequenceEncoder(self.x_in_dim + c.u_dim, c.rnn_dim, c.rnn_type,
                                       "backward" if self.causal else "bidirectional")  # g_t
        self.z_rnn = Recurrence(c.rnn_type, c.z_dim, c.rnn_dim)  # k_t over the drawn z
        self.posterior = GaussianHead(self.encoder.out_dim + c.rnn_dim, c.transition_dim, c.z_dim)

    @property
    def step_by_step_problem(self):
        """Why this model cannot run step by step (predict, world model, particle filter), or None."""
        if self.causal:
            return None
        return ("the non-causal RVAE emits x_t from all of z_{0:T-1} (a bidirectional RNN): it is not a forward "
                "state-space model, so it cannot predict, act as a world model or run the particle filter "
                "(train it with rvae_causal for those)")

    def _refuse_steps(self):
        if not self.causal:
            raise ValueError(self.step_by_step_problem)

    # --- the contract (causal form) --------------------------------------------------------------------
    def _standard(self, n: int):
        loc = torch.zeros(n, self.config.z_dim, **self.tensor_kind)  # (n, z_dim)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def initial_state(self, n: int, c=None):
        """h_{-1} learned, u_{-1} = 0; p(z_0) = N(0, I)."""
        self._refuse_steps()
        u = torch.zeros(n, self.config.u_dim, **self.tensor_kind) if self.config.u_dim else None
        return {"rec": self.decoder.initial(n), "u": u}, self._standard(n)

    def transition_step(self, state: State, x, u=None, obs_mask=None):
        """Nothing runs until z_t is drawn: u_{t-1} is kept for it; p(z_t) = N(0, I) (x is not read)."""
        self._refuse_steps()
        return {"rec": state["rec"], "u": u}, self._standard(Recurrence.output(state["rec"]).shape[0])

    def with_latent(self, state: State, z) -> State:
        """h_t = RNN([z_t, u_{t-1}], h_{t-1})."""
        inp = z if state.get("u") is None else torch.cat([z, state["u"]], -1)  # (n, z_dim + u_dim)
        return {**state, "z": z, "rec": self.decoder(inp, state["rec"])}

    def emission(self, state: State, obs_mask=None):
        """p(x_t | h_t)."""
        return observation_dist(self.emitter(Recurrence.output(state["rec"])), self.config.likelihood, obs_mask)

    # --- the decoder over a whole path --------------------------------------------------------------------
    def decoder_states(self, batch: SequenceBatch, z):
        """h_t of every step (B, T, h_dim) along the path z (B, T, z_dim): one multi-step call per direction."""
        u_prev = shifted_controls(batch)
        inp = z if u_prev is None else torch.cat([z, u_prev], -1)  # (B, T, z_dim + u_dim)
        fwd = self.decoder.scan(inp, self.decoder.initial(z.shape[0]))  # (B, T, rnn_dim)
        if self.causal:
            return fwd
        back = reverse_padded(run_rnn(self.decoder_back, reverse_padded(inp, batch.lengths)), batch.lengths)
        return torch.cat([fwd, back], -1)  # (B, T, 2 rnn_dim)

    def emission_path(self, batch: SequenceBatch, z):
        """p(x_t | h_t) of every step along the path z: batch (B, T)."""
        return observation_dist(self.emitter(self.decoder_states(batch, z)), self.config.likelihood, batch.obs_mask)

    def prior_path(self, batch: SequenceBatch) -> PriorPath:
        """prod_t N(z_t; 0, I): batch (B,), event (T, z_dim)."""
        B, T, d = batch.batch_size, batch.num_steps, self.config.z_dim
        zeros = batch.x.new_zeros(B, T, d)
        return PriorPath(lambda z: (zeros, torch.ones_like(zeros)), (B, T, d), batch.mask,
                         step=lambda t, z_prev: (zeros[:, t], torch.ones_like(zeros[:, t])))

    # --- the guide -----------------------------------------------------------------------------------------
    def _summaries(self, batch: SequenceBatch):
        """g_t of every step (B, T, g_dim), from [x_t, u_{t-1}]."""
        y = self.x_input(batch.x, batch.obs_mask)
        u_prev = shifted_controls(batch)
        return self.encoder(y if u_prev is None else torch.cat([y, u_prev], -1), batch.lengths)

    def _guide_steps(self, batch: SequenceBatch, draw):
        """Run q(z_t | z_{0:t-1}, g_t) step by step; ``draw(t, loc, scale)`` returns z_t (B, z_dim).
        Returns loc, scale, z, each (B, T, z_dim)."""
        g = self._summaries(batch).unbind(1)  # (B, g_dim) per step
        k = self.z_rnn.initial(batch.batch_size)
        locs, scales, zs = [], [], []
        for t in range(batch.num_steps):
            loc, scale = self.posterior(torch.cat([g[t], Recurrence.output(k)], -1))  # (B, z_dim) each
            z = draw(t, loc, scale)
            locs.append(loc), scales.append(scale), zs.append(z)
            if t + 1 < batch.num_steps:
                k = self.z_rnn(z, k)
        return torch.stack(locs, 1), torch.stack(scales, 1), torch.stack(zs, 1)

    def posterior_path(self, batch: SequenceBatch) -> GuidePath:
        """q(z | x, u) drawn along the path: the normals drawn as :meth:`guide` draws them."""
        loc, scale, z = self._guide_steps(batch, lambda t, m, s: m + torch.empty_like(m).normal_() * s)
        return GuidePath(loc, scale, z, batch.mask)

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u), one site per step. Returns the path (B, T, z_dim)."""
        pyro.module(self.name, self)
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            def draw(t, loc, scale):
                with poutine.scale(scale=annealing_factor):
                    return pyro.sample(f"z_{t}", dist.Normal(loc, scale).to_event(1).mask(batch.mask[:, t]))
            return self._guide_steps(batch, draw)[2]

    # --- the per-step model -------------------------------------------------------------------------------
    def model(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, z | u), one site per step. The causal form is the contract's (the base program); the
        non-causal one draws every z_t first, then decodes the path in one call."""
        if self.causal:
            return super().model(batch, annealing_factor)
        pyro.module(self.name, self)
        B, T = batch.batch_size, batch.num_steps
        with pyro.plate("sequences", B, dim=-1):
            zs = []
            for t in range(T):
                with poutine.scale(scale=annealing_factor):
                    zs.append(pyro.sample(f"z_{t}", self._standard(B).mask(batch.mask[:, t])))  # (B, z_dim)
            z = torch.stack(zs, 1)  # (B, T, z_dim)
            h = self.decoder_states(batch, z).unbind(1)  # T tensors (B, 2 rnn_dim): unbind, not h[:, t]
            for t in range(T):
                p_x = observation_dist(self.emitter(h[t]), self.config.likelihood, batch.step_obs_mask(t))
                pyro.sample(f"x_{t}", p_x.mask(batch.mask[:, t]), obs=batch.x[:, t])
        return z
