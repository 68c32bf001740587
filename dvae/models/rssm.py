"""RSSM, the recurrent state-space model of PlaNet (Hafner et al. 2019), with controls.

Generative story, for each sequence (h_0 learned)::

    h_t = f(h_{t-1}, [z_{t-1}, u_{t-1}])             t >= 1: a deterministic recurrence (GRU by default)
    z_t ~ N(Prior(h_t))                              p(z_t | h_t)
    x_t ~ Emitter(h_t, z_t)                          p(x_t | h_t, z_t): Gaussian or Bernoulli

The state (h_t, z_t) is Markov given the controls: the model never reads its own observations, so
it imagines forward from (h, z) alone, which is what a planner needs.

Guide (filtering, as in PlaNet): q(z_t | h_t, x_t) = N(Posterior(h_t, x_t)), with h_t the model's own
recurrence run on the guide's z_{<t}: q(z_t | z_{<t}, x_t, u_{<t}).

Training options:

- free nats: ``TrainConfig.free_bits`` (``dvae train --free-bits``) floors each step's KL, summed over
  the batch, at free_bits * z_dim nats per real sequence; PlaNet's free nats F per step are
  ``free_bits = F / z_dim`` (PlaNet floors each sequence's step, Dreamer the batch mean: this is the
  batch mean of each step).
- KL balancing (DreamerV2, Hafner et al. 2021): ``ModelConfig.kl_balance`` alpha (0.8 in DreamerV2;
  0: off) makes each step's KL alpha KL(sg(q) || p) + (1 - alpha) KL(q || sg(p)): the same value, the
  gradient moving the prior toward the posterior more than the reverse
  (:func:`~dvae.models.paths.balanced_normal_kl`; the prior's sites are
  :class:`~dvae.models.paths.BalancedNormal`, the vectorized prior a ``PriorPath`` with ``kl_balance``).

The contract of :class:`~dvae.models.base.DynamicalVAE`: the state holds h_t and z_t;
``initial_state`` gives h_0 and p(z_0 | h_0); ``transition_step`` runs h_t = f(h_{t-1}, [z_{t-1},
u_{t-1}]) (x_{t-1} is not read) and gives p(z_t | h_t); ``emission`` p(x_t | h_t, z_t); ``filter_step``
the guide's q(z_t | h_t, x_t), over which the per-step guide is written by the base class.

The time-vectorized form: the guide runs the recurrence step by step (h_t needs z_{t-1}) in plain
torch and keeps h beside the path it drew; the model reuses it (the same value and gradients), or for
any other path runs it as one multi-step RNN call over the known [z_{t-1}, u_{t-1}]; the prior and the
emitter of every step are one batched call each.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.utils.weak import WeakTensorKeyDictionary

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, observation_dist
from dvae.models.paths import BalancedNormal, GuidePath, PriorPath
from dvae.models.state import State
from dvae.nn import Emitter, GaussianHead, Recurrence

# path drawn by RSSM.posterior_path -> (model, u, h (B, T, rnn_dim)); an entry dies with its path
_GUIDE_H = WeakTensorKeyDictionary()


class RSSM(DynamicalVAE):
    name = "rssm"
    kl_balancing = True

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        if not 0.0 <= c.kl_balance < 1.0:
            raise ValueError(f"kl_balance must be in [0, 1) (0: off), got {c.kl_balance}")
        self.recurrence = Recurrence(c.rnn_type, c.z_dim + c.u_dim, c.rnn_dim)  # h_t
        self.prior = GaussianHead(c.rnn_dim, c.transition_dim, c.z_dim)  # p(z_t | h_t)
        self.emitter = Emitter(c.rnn_dim + c.z_dim, c.x_dim, c.emission_dim, c.likelihood,
                               c.emission_scale)  # p(x_t | h_t, z_t)
        self.posterior = GaussianHead(c.rnn_dim + self.x_in_dim, c.transition_dim, c.z_dim)  # q(z_t | h_t, x_t)

    def _prior_dist(self, rec):
        loc, scale = self.prior(Recurrence.output(rec))  # (n, z_dim) each
        if self.config.kl_balance:
            return BalancedNormal(loc, scale, self.config.kl_balance).to_event(1)
        return dist.Normal(loc, scale).to_event(1)

    # --- the contract: the dynamics, stated once -----------------------------------------------------
    def initial_state(self, n: int, c=None):
        """h_0 learned; p(z_0 | h_0)."""
        rec = self.recurrence.initial(n)
        return {"rec": rec}, self._prior_dist(rec)

    def transition_step(self, state: State, x, u=None, obs_mask=None):
        """h_t = f(h_{t-1}, [z_{t-1}, u_{t-1}]); p(z_t | h_t). x_{t-1} is not read."""
        inp = state["z"] if u is None else torch.cat([state["z"], u], -1)
        rec = self.recurrence(inp, state["rec"])
        return {"rec": rec}, self._prior_dist(rec)

    def emission(self, state: State, obs_mask=None):
        """p(x_t | h_t, z_t)."""
        features = torch.cat([Recurrence.output(state["rec"]), state["z"]], -1)
        return observation_dist(self.emitter(features), self.config.likelihood, obs_mask)

    def filter_step(self, state: State, x, obs_mask=None):
        """The guide's q(z_t | h_t, x_t)."""
        loc, scale = self.posterior(torch.cat([Recurrence.output(state["rec"]), self.x_input(x, obs_mask)], -1))
        return dist.Normal(loc, scale).to_event(1)

    # --- the same densities along a whole path (the time-vectorized program) -------------------------
    def posterior_path(self, batch: SequenceBatch) -> GuidePath:
        """The guide's path, filtering step by step as the per-step guide does (the same normals in the
        same order); h kept for :meth:`prior_path` and :meth:`emission_path`."""
        B, T = batch.batch_size, batch.num_steps
        y = self.x_input(batch.x, batch.obs_mask).unbind(1)  # (B, x_in_dim) per step
        rec = self.recurrence.initial(B)
        locs, scales, zs, hs = [], [], [], []
        for t in range(T):
            h = Recurrence.output(rec)
            loc, scale = self.posterior(torch.cat([h, y[t]], -1))
            z = loc + torch.empty_like(loc).normal_() * scale  # (B, z_dim), as Normal.rsample
            locs.append(loc), scales.append(scale), zs.append(z), hs.append(h)
            if t + 1 < T:
                rec = self.recurrence(z if batch.u is None else torch.cat([z, batch.u[:, t]], -1), rec)
        path = torch.stack(zs, 1)  # (B, T, z_dim)
        _GUIDE_H[path] = (self, batch.u, torch.stack(hs, 1))
        return GuidePath(torch.stack(locs, 1), torch.stack(scales, 1), path, batch.mask)

    def _h_along(self, batch: SequenceBatch, z) -> torch.Tensor:
        """h_t for every t along the path z (B, T, rnn_dim): the guide's when it drew z, else one RNN call."""
        hit = _GUIDE_H.get(z)
        if hit is not None and hit[0] is self and hit[1] is batch.u:
            return hit[2]
        rec = self.recurrence.initial(batch.batch_size)
        h_0 = Recurrence.output(rec)[:, None]  # (B, 1, rnn_dim)
        if batch.num_steps == 1:
            return h_0
        inp = z[:, :-1] if batch.u is None else torch.cat([z[:, :-1], batch.u[:, :-1]], -1)  # (B, T-1, .)
        return torch.cat([h_0, self.recurrence.scan(inp, rec)], 1)

    def prior_path(self, batch: SequenceBatch) -> PriorPath:
        """p(z_t | h_t) of every step in one call at a given path."""
        alpha = self.config.kl_balance or None
        return PriorPath(lambda z: self.prior(self._h_along(batch, z)),
                         (batch.batch_size, batch.num_steps, self.config.z_dim), batch.mask, kl_balance=alpha)

    def emission_path(self, batch: SequenceBatch, z):
        """p(x_t | h_t, z_t) of every step along the path z: batch (B, T)."""
        features = torch.cat([self._h_along(batch, z), z], -1)  # (B, T, rnn_dim + z_dim)
        return observation_dist(self.emitter(features), self.config.likelihood, batch.obs_mask)
