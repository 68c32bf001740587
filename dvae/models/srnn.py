"""SRNN, the stochastic recurrent neural network (Fraccaro et al. 2016), with controls.

Generative story, for each sequence (x_{-1} = 0, u_{-1} = 0, d_{-1} learned, z_{-1} = 0)::

    d_t = f(d_{t-1}, [x_{t-1}, u_{t-1}])             a deterministic forward RNN (GRU, LSTM or ReLU cell)
    z_t ~ N(Prior(z_{t-1}, d_t))                     p(z_t | z_{t-1}, d_t)
    x_t ~ Emitter(z_t, d_t)                          p(x_t | z_t, d_t): Gaussian or Bernoulli

d_t summarises x_{<t} and u_{<t}; the stochastic layer is a Markov chain driven by it.

Guide (smoothing): a backward RNN a_t over [d_t, x_t] summarises d_{t:T} and x_{t:T}, and
q(z_t | z_{t-1}, a_t) = N(Posterior(z_{t-1}, a_t)): q(z_t | z_{t-1}, x_{0:T}, u_{0:T-2}) (d_t is shared
with the model). ``ModelConfig.guide``:

- ``dks`` (the default; the name of the DMM's guide of the same structure): the posterior's mean is
  the network's output;
- ``resq`` (the paper's "Resq"): the network gives a residual on the prior's mean,
  loc_q = loc_p(z_{t-1}, d_t) + Posterior_loc(z_{t-1}, a_t), the scale as in ``dks``.

The contract of :class:`~dvae.models.base.DynamicalVAE`: the state holds d_t (the recurrence's state)
and z_t; ``initial_state`` runs d_0 = f(d_{-1}, 0) and gives p(z_0 | z_{-1} = 0, d_0);
``transition_step`` runs d_t = f(d_{t-1}, [x_{t-1}, u_{t-1}]) and gives p(z_t | z_{t-1}, d_t);
``emission`` p(x_t | z_t, d_t). The guide is the family's own (it is a smoother, not a filter).

The time-vectorized form: d for every step is one multi-step RNN call (it does not read z), a the
backward RNN's call; only the guide's draw runs step by step (z_t needs z_{t-1}); the prior and the
emitter of every step are one batched call each on the path. The guide's d is kept beside the path
it drew (as the VRNN keeps its recurrence) so the model reuses it: the same value and gradients, one
RNN call instead of three. d reads the OBSERVED x_{<t}, so the vectorized model is a scoring program
(``generate`` and ``predict`` use the per-step program).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.utils.weak import WeakTensorKeyDictionary

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, observation_dist
from dvae.models.paths import GuidePath, PriorPath
from dvae.models.state import State
from dvae.models.storn import shift_right
from dvae.nn import Emitter, GaussianHead, Recurrence, SequenceEncoder

# path drawn by SRNN.posterior_path -> (model, x, u, d (B, T, rnn_dim)); an entry dies with its path
_GUIDE_D = WeakTensorKeyDictionary()


class SRNN(DynamicalVAE):
    name = "srnn"
    guides = ("dks", "resq")

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        if c.guide not in self.guides:
            raise ValueError(f"unknown SRNN guide {c.guide!r} (choose dks or resq)")
        self.inp_dim = self.x_in_dim + c.u_dim  # [x_{t-1} (and its mask), u_{t-1}]
        self.recurrence = Recurrence(c.rnn_type, self.inp_dim, c.rnn_dim)  # d_t
        self.prior = GaussianHead(c.z_dim + c.rnn_dim, c.transition_dim, c.z_dim)  # p(z_t | z_{t-1}, d_t)
        self.emitter = Emitter(c.z_dim + c.rnn_dim, c.x_dim, c.emission_dim, c.likelihood,
                               c.emission_scale)  # p(x_t | z_t, d_t)
        self.encoder = SequenceEncoder(c.rnn_dim + self.x_in_dim, c.rnn_dim, c.rnn_type, "backward")  # a_t
        self.posterior = GaussianHead(c.z_dim + c.rnn_dim, c.transition_dim, c.z_dim)  # q(z_t | z_{t-1}, a_t)

    def _input(self, x, u, obs_mask=None):
        y = self.x_input(x, obs_mask)
        return y if u is None else torch.cat([y, u], -1)  # (..., inp_dim)

    def _prior_dist(self, z_prev, rec):
        loc, scale = self.prior(torch.cat([z_prev, Recurrence.output(rec)], -1))  # (n, z_dim) each
        return dist.Normal(loc, scale).to_event(1)

    # --- the contract: the dynamics, stated once -----------------------------------------------------
    def initial_state(self, n: int, c=None):
        """d_0 = f(d_{-1}, 0); p(z_0 | z_{-1} = 0, d_0)."""
        rec = self.recurrence(torch.zeros(n, self.inp_dim, **self.tensor_kind), self.recurrence.initial(n))
        return {"rec": rec}, self._prior_dist(torch.zeros(n, self.config.z_dim, **self.tensor_kind), rec)

    def transition_step(self, state: State, x, u=None, obs_mask=None):
        """d_t = f(d_{t-1}, [x_{t-1}, u_{t-1}]); p(z_t | z_{t-1}, d_t)."""
        rec = self.recurrence(self._input(x, u, obs_mask), state["rec"])
        return {"rec": rec}, self._prior_dist(state["z"], rec)

    def emission(self, state: State, obs_mask=None):
        """p(x_t | z_t, d_t)."""
        features = torch.cat([state["z"], Recurrence.output(state["rec"])], -1)
        return observation_dist(self.emitter(features), self.config.likelihood, obs_mask)

    # --- the guide: q(z_t | z_{t-1}, a_t) ----------------------------------------------------------------
    def deterministic_path(self, batch: SequenceBatch) -> torch.Tensor:
        """d_t for every step (B, T, rnn_dim): one multi-step RNN call over [x_{t-1}, u_{t-1}] from d_{-1}."""
        inp = shift_right(self._input(batch.x, batch.u, batch.obs_mask))  # (B, T, inp_dim)
        return self.recurrence.scan(inp, self.recurrence.initial(batch.batch_size))

    def _guide_step(self, z_prev, a_t, d_t):
        """loc, scale (B, z_dim) of q(z_t | z_{t-1}, a_t) (resq: the prior's mean plus the residual)."""
        loc, scale = self.posterior(torch.cat([z_prev, a_t], -1))
        if self.config.guide == "resq":
            loc = loc + self.prior(torch.cat([z_prev, d_t], -1))[0]
        return loc, scale

    def _guide_inputs(self, batch: SequenceBatch):
        """(d, a): (B, T, rnn_dim) each, a the backward RNN over [d_t, x_t]."""
        d = self.deterministic_path(batch)
        a = self.encoder(torch.cat([d, self.x_input(batch.x, batch.obs_mask)], -1), batch.lengths)
        return d, a

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u), one site per step. Returns the sampled path (B, T, z_dim)."""
        pyro.module(self.name, self)
        B, T = batch.batch_size, batch.num_steps
        d, a = self._guide_inputs(batch)
        z, zs = d.new_zeros(B, self.config.z_dim), []  # z_{-1} = 0
        a_t, d_t = a.unbind(1), d.unbind(1)  # T tensors each: unbind, not a[:, t] (a backward linear in T)
        with pyro.plate("sequences", B, dim=-1):
            for t in pyro.markov(range(T)):
                loc, scale = self._guide_step(z, a_t[t], d_t[t])
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", dist.Normal(loc, scale).to_event(1).mask(batch.mask[:, t]))
                zs.append(z)
        return torch.stack(zs, 1)

    # --- the same densities along a whole path (the time-vectorized program) -------------------------
    def posterior_path(self, batch: SequenceBatch) -> GuidePath:
        """The guide's path, drawn step by step with the same normals in the same order as :meth:`guide`;
        its d kept for :meth:`prior_path` and :meth:`emission_path`."""
        B, T = batch.batch_size, batch.num_steps
        d, a = self._guide_inputs(batch)
        z, locs, scales, zs = d.new_zeros(B, self.config.z_dim), [], [], []
        a_t, d_t = a.unbind(1), d.unbind(1)  # T tensors each: unbind, not a[:, t] (a backward linear in T)
        for t in range(T):
            loc, scale = self._guide_step(z, a_t[t], d_t[t])
            z = loc + torch.empty_like(loc).normal_() * scale  # (B, z_dim), as Normal.rsample
            locs.append(loc), scales.append(scale), zs.append(z)
        path = torch.stack(zs, 1)  # (B, T, z_dim)
        _GUIDE_D[path] = (self, batch.x, batch.u, d)
        return GuidePath(torch.stack(locs, 1), torch.stack(scales, 1), path, batch.mask)

    def _d_along(self, batch: SequenceBatch, z) -> torch.Tensor:
        """d for the path z: the guide's when z is the path it just drew from this batch, else one RNN call."""
        hit = _GUIDE_D.get(z)
        if hit is not None and hit[0] is self and hit[1] is batch.x and hit[2] is batch.u:
            return hit[3]
        return self.deterministic_path(batch)

    def prior_path(self, batch: SequenceBatch) -> PriorPath:
        """p(z_t | z_{t-1}, d_t) of every step in one call at a given path (d from the observed x_{<t}:
        a scoring distribution)."""
        B, T, zd = batch.batch_size, batch.num_steps, self.config.z_dim

        def params(z):  # (B, T, z_dim) each
            return self.prior(torch.cat([shift_right(z), self._d_along(batch, z)], -1))

        return PriorPath(params, (B, T, zd), batch.mask)

    def emission_path(self, batch: SequenceBatch, z):
        """p(x_t | z_t, d_t) of every step along the path z: batch (B, T)."""
        features = torch.cat([z, self._d_along(batch, z)], -1)  # (B, T, z_dim + rnn_dim)
        return observation_dist(self.emitter(features), self.config.likelihood, batch.obs_mask)
