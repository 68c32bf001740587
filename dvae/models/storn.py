"""STORN, the stochastic recurrent network (Bayer and Osendorfer 2014), with controls.

Generative story, for each sequence (x_{-1} = 0, u_{-1} = 0, h_{-1} learned)::

    z_t ~ N(0, I)                                    i.i.d.: the prior has no dynamics
    h_t = f(h_{t-1}, [x_{t-1}, z_t, u_{t-1}])        a deterministic recurrence (GRU, LSTM or ReLU RNN cell)
    x_t ~ Emitter(h_t)                               p(x_t | h_t): Gaussian or Bernoulli

so p(x_t | x_{<t}, z_{<=t}, u_{<t}): the latent noise drives the recurrence, which also reads the
previous observation (an autoregressive RNN made stochastic).

Guide (filtering, as in the paper): a forward RNN g_t over [x_t, u_{t-1}] (u_{-1} = 0) and
q(z_t | g_t) = N(Posterior(g_t)): q(z_t | x_{0:t}, u_{0:t-1}). It does not read z_{<t}, so all its
parameters come from one RNN call and one head call, and the KL of a step is against N(0, I).

The contract of :class:`~dvae.models.base.DynamicalVAE`: the state holds the recurrence's h and the
input [x_{t-1}, u_{t-1}] that step t's update will read beside z_t. ``initial_state`` gives p(z_0) =
N(0, I) and the zero input; ``with_latent`` runs the update h_t = f(h_{t-1}, [x_{t-1}, z_t, u_{t-1}])
(z_t enters h_t, so the update belongs where z_t is known); ``transition_step`` stores
[x_t, u_t] and gives N(0, I) again; ``emission`` reads h_t.

The time-vectorized form: the guide's path is one RNN call, one head call and the draws; the prior is
N(0, I) at every step; the emitter's h for every step is one multi-step RNN call over the known inputs
[x_{t-1}, z_t, u_{t-1}] (``Recurrence.scan``). The model reads the OBSERVED x_{<t}, so the vectorized
model is a scoring program (``generate`` and ``predict`` use the per-step program).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, observation_dist
from dvae.models.paths import GuidePath, PriorPath
from dvae.models.state import State
from dvae.nn import Emitter, GaussianHead, Recurrence, SequenceEncoder


def shift_right(y: torch.Tensor) -> torch.Tensor:
    """y_{t-1} at every step t, zeros at t = 0: (B, T, d) -> (B, T, d)."""
    return torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], 1)


class STORN(DynamicalVAE):
    name = "storn"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        self.inp_dim = self.x_in_dim + c.u_dim  # [x_{t-1} (and its mask), u_{t-1}]
        self.recurrence = Recurrence(c.rnn_type, self.inp_dim + c.z_dim, c.rnn_dim)  # h_t
        self.emitter = Emitter(c.rnn_dim, c.x_dim, c.emission_dim, c.likelihood, c.emission_scale)  # p(x_t | h_t)
        self.encoder = SequenceEncoder(self.x_in_dim + c.u_dim, c.rnn_dim, c.rnn_type, "forward")  # g_t
        self.posterior = GaussianHead(c.rnn_dim, c.transition_dim, c.z_dim)  # q(z_t | g_t)

    def _standard(self, n: int):
        loc = torch.zeros(n, self.config.z_dim, **self.tensor_kind)  # (n, z_dim)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def _input(self, x, u, obs_mask=None):
        """What step t's update reads beside z_t: [x_{t-1}, u_{t-1}] (n, inp_dim)."""
        y = self.x_input(x, obs_mask)
        return y if u is None else torch.cat([y, u], -1)

    # --- the contract: the dynamics, stated once -----------------------------------------------------
    def initial_state(self, n: int, c=None):
        """h_{-1} learned, the input [x_{-1}, u_{-1}] = 0; p(z_0) = N(0, I)."""
        inp = torch.zeros(n, self.inp_dim, **self.tensor_kind)  # (n, inp_dim)
        return {"rec": self.recurrence.initial(n), "inp": inp}, self._standard(n)

    def transition_step(self, state: State, x, u=None, obs_mask=None):
        """Keeps h_{t-1} and the input [x_{t-1}, u_{t-1}]; p(z_t) = N(0, I)."""
        return {"rec": state["rec"], "inp": self._input(x, u, obs_mask)}, self._standard(x.shape[0])

    def with_latent(self, state: State, z) -> State:
        """h_t = f(h_{t-1}, [x_{t-1}, z_t, u_{t-1}])."""
        rec = self.recurrence(torch.cat([state["inp"], z], -1), state["rec"])
        return {**state, "rec": rec, "z": z}

    def emission(self, state: State, obs_mask=None):
        """p(x_t | h_t)."""
        return observation_dist(self.emitter(Recurrence.output(state["rec"])), self.config.likelihood, obs_mask)

    # --- the guide: q(z_t | x_{0:t}, u_{0:t-1}) ---------------------------------------------------------
    def posterior_params(self, batch: SequenceBatch):
        """loc, scale (B, T, z_dim) of q(z_t | g_t), g the forward RNN over [x_t, u_{t-1}]."""
        u = None if batch.u is None else shift_right(batch.u)  # u_{t-1} at step t
        y = self.x_input(batch.x, batch.obs_mask)
        return self.posterior(self.encoder(y if u is None else torch.cat([y, u], -1), batch.lengths))

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u), one site per step. Returns the sampled path (B, T, z_dim)."""
        pyro.module(self.name, self)
        loc, scale = self.posterior_params(batch)  # (B, T, z_dim) each
        loc_t, scale_t = loc.unbind(1), scale.unbind(1)  # T tensors (B, z_dim): unbind, not loc[:, t]
        zs = []
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            for t in pyro.markov(range(batch.num_steps)):
                q = dist.Normal(loc_t[t], scale_t[t]).to_event(1)
                with poutine.scale(scale=annealing_factor):
                    zs.append(pyro.sample(f"z_{t}", q.mask(batch.mask[:, t])))  # (B, z_dim)
        return torch.stack(zs, 1)

    # --- the same densities along a whole path (the time-vectorized program) -------------------------
    def posterior_path(self, batch: SequenceBatch) -> GuidePath:
        """The guide's path: the same normals in the same order as :meth:`guide` (a (B, z_dim) block a step)."""
        loc, scale = self.posterior_params(batch)
        eps = torch.stack([torch.empty_like(loc[:, t]).normal_() for t in range(batch.num_steps)], 1)
        return GuidePath(loc, scale, loc + eps * scale, batch.mask)  # path (B, T, z_dim)

    def prior_path(self, batch: SequenceBatch) -> PriorPath:
        """N(0, I) at every step."""
        B, T, d = batch.batch_size, batch.num_steps, self.config.z_dim
        zeros = batch.x.new_zeros(B, T, d)

        def step(t, z_prev):
            return zeros[:, t], torch.ones_like(zeros[:, t])

        return PriorPath(lambda z: (zeros, torch.ones_like(zeros)), (B, T, d), batch.mask, step=step)

    def emission_path(self, batch: SequenceBatch, z):
        """p(x_t | h_t) of every step along the path z (B, T, z_dim): one multi-step RNN call over
        [x_{t-1}, z_t, u_{t-1}]: batch (B, T)."""
        inp = shift_right(self._input(batch.x, batch.u, batch.obs_mask))  # (B, T, inp_dim)
        h = self.recurrence.scan(torch.cat([inp, z], -1), self.recurrence.initial(batch.batch_size))  # (B, T, rnn_dim)
        return observation_dist(self.emitter(h), self.config.likelihood, batch.obs_mask)
