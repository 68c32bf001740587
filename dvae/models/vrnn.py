"""The variational RNN (Chung et al. 2015), with controls.

A deterministic recurrence h_t = f(phi_x(x_t), phi_z(z_t), u_t, h_{t-1}) carries the history;
the latent at each step is drawn from a prior that reads it::

    z_t ~ N(Prior(h_{t-1}))
    x_t ~ Emitter(phi_z(z_t), h_{t-1})
    h_t = f(phi_x(x_t), phi_z(z_t), u_t, h_{t-1})

Guide: q(z_t | x_t, h_{t-1}) = N(Posterior(phi_x(x_t), h_{t-1})), filtering, sharing f with the model.

Missing entries (a batch's ``obs_mask``): the recurrence of the MODEL reads x_t too, so where entries
are missing it reads them as the inference networks do, 0 (and, with ``config.missing``, the mask
beside them): the program is then a model of the observed entries given which ones are observed,
and its ELBO a bound on log p(x_obs | obs_mask).

The time-vectorized form (``model_vectorized``/``guide_vectorized``): the path is one site ``"z"``
(B, T, z_dim), the observations one site ``"x"``. The guide runs the recurrence step by step (h_t
needs z_t; with a ReLU RNN cell the whole loop is one fused autograd node, ``dvae.nn._VRNNFilterScan``). The model, given the replayed path and the observed x, needs h_{t-1} for every t: for the
path the guide just drew it reuses the guide's (the same function of the same inputs, so the same
value and gradients, one recurrence instead of two); for any other path it knows every input of the
recurrence in advance and runs it as one multi-step RNN call (``Recurrence.scan``). Then the prior and
the emitter of every step run in one batched call each. Its ``"z"`` site is the product of
p(z_t | h_{t-1}) with h built from the OBSERVED x_{<t}, so the vectorized model is a scoring program:
it cannot run unconditioned (``generate`` and ``predict`` use the per-step program).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
import torch.nn.functional as F
from pyro import poutine
from torch.utils.weak import WeakTensorKeyDictionary

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, observation_dist
from dvae.models.paths import GuidePath, PriorPath, observation_path
from dvae.nn import Emitter, GaussianHead, Recurrence, _VRNNFilterScan

# path drawn by VRNN.guide_vectorized -> (model, x, u, (phi_z, h_{t-1})): the recurrence along that path,
# for model_vectorized to reuse; an entry disappears with its path tensor
_GUIDE_FEATURES = WeakTensorKeyDictionary()


class VRNN(DynamicalVAE):
    name = "vrnn"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        feat = c.emission_dim
        self.phi_x = nn.Sequential(nn.Linear(self.x_in_dim, feat), nn.ReLU())  # features of x_t (and its mask)
        self.phi_z = nn.Sequential(nn.Linear(c.z_dim, feat), nn.ReLU())  # features of z_t
        self.prior = GaussianHead(c.rnn_dim, c.transition_dim, c.z_dim)  # p(z_t | h_{t-1})
        self.posterior = GaussianHead(feat + c.rnn_dim, c.transition_dim, c.z_dim)  # q(z_t | x_t, h_{t-1})
        self.emitter = Emitter(feat + c.rnn_dim, c.x_dim, c.emission_dim, c.likelihood)  # p(x_t | z_t, h_{t-1})
        self.recurrence = Recurrence(c.rnn_type, 2 * feat + c.u_dim, c.rnn_dim)  # h_t

    def _step(self, x_t, z_t, u_t, state, obs_mask_t=None):
        parts = [self.phi_x(self.x_input(x_t, obs_mask_t)), self.phi_z(z_t)] + ([] if u_t is None else [u_t])
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
                obs_mask_t = self._obs_mask(batch, t)
                x = pyro.sample(f"x_{t}", observation_dist(x_params, self.config.likelihood, obs_mask_t).mask(m),
                                obs=batch.x[:, t])  # (B, x_dim)
                state = self._step(x, z, self._u(batch, t), state, obs_mask_t)
                zs.append(z)
        return torch.stack(zs, 1)  # (B, T, z_dim)

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u), filtering. Returns the sampled latent path (B, T, z_dim)."""
        pyro.module("vrnn", self)
        B, T = batch.batch_size, batch.num_steps
        state, zs = self.recurrence.initial(B), []
        with pyro.plate("sequences", B, dim=-1):
            for t in pyro.markov(range(T)):
                x, obs_mask_t = batch.x[:, t], self._obs_mask(batch, t)
                phi_x = self.phi_x(self.x_input(x, obs_mask_t))
                loc, scale = self.posterior(torch.cat([phi_x, Recurrence.output(state)], -1))
                with poutine.scale(scale=annealing_factor):
                    z = pyro.sample(f"z_{t}", dist.Normal(loc, scale).to_event(1).mask(batch.mask[:, t]))
                state = self._step(x, z, self._u(batch, t), state, obs_mask_t)
                zs.append(z)
        return torch.stack(zs, 1)  # (B, T, z_dim)

    # --- the time-vectorized program ---------------------------------------------------------------
    def path_features(self, phi_x, z, u):
        """(phi_z(z), h_{t-1}) for every t, given phi_x(x) (B, T, feat), the path z (B, T, z_dim) and
        the controls: the emitter's input is their concatenation and the prior reads h_{t-1}."""
        phi_z = self.phi_z(z)
        return phi_z, self._scan(phi_x, phi_z, u)

    def _scan(self, phi_x, phi_z, u):
        """h_{t-1} for every t (B, T, rnn_dim), h_{-1} being the learned initial state, from the features
        of the observed x and of the path z (B, T, feat) and the controls: one multi-step RNN call."""
        B, T = phi_x.shape[:2]
        state = self.recurrence.initial(B)
        h_init = Recurrence.output(state)[:, None]  # (B, 1, rnn_dim)
        if T == 1:
            return h_init
        parts = [phi_x[:, :-1], phi_z[:, :-1]] + ([] if u is None else [u[:, :-1]])
        h = self.recurrence.scan(torch.cat(parts, -1), state)  # h_0 .. h_{T-2}
        return torch.cat([h_init, h], 1)

    def model_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """p(x, z | u) with the path and the observations as one site each, for scoring with x
        observed. Returns the latent path (B, T, z_dim).

        Given the path that :meth:`guide_vectorized` drew from this batch, it reuses the guide's
        phi_z(z_t) and h_{t-1} (the same function of the same inputs, with their autograd graph: the
        same value and gradients, one recurrence instead of two); given any other path it runs the
        recurrence itself (:meth:`path_features`).
        """
        pyro.module("vrnn", self)
        B, T = batch.batch_size, batch.num_steps
        memo = {}

        def features(z):  # phi_z(z) and h_{t-1} for the path z, computed once per path
            if memo.get("z") is not z:
                hit = _GUIDE_FEATURES.get(z)
                if hit is not None and hit[0] is self and hit[1] is batch.x and hit[2] is batch.u:
                    memo.update(z=z, features=hit[3])
                else:
                    phi_x = self.phi_x(self.x_input(batch.x, batch.obs_mask))
                    memo.update(z=z, features=self.path_features(phi_x, z, batch.u))
            return memo["features"]

        prior = PriorPath(lambda z: self.prior(features(z)[1]), (B, T, self.config.z_dim), batch.mask)
        with pyro.plate("sequences", B, dim=-1):
            with poutine.scale(scale=annealing_factor):
                z = pyro.sample("z", prior)  # (B, T, z_dim)
            x_dist = observation_dist(self.emitter(torch.cat(features(z), -1)), self.config.likelihood, batch.obs_mask)
            pyro.sample("x", observation_path(x_dist, batch.mask), obs=batch.x)
        return z

    def guide_path(self, batch: SequenceBatch, features: bool = False):
        """Draw a path from q(z | x, u), filtering, plain torch: (loc, scale, path), each (B, T, z_dim),
        and with ``features`` also (phi_z(z), h_{t-1}) (B, T, .) as :meth:`path_features` gives them.

        Draws the same normals in the same order as :meth:`guide` (one (B, z_dim) block per step).
        """
        B, T = batch.batch_size, batch.num_steps
        phi_x = self.phi_x(self.x_input(batch.x, batch.obs_mask))  # (B, T, feat), every step at once
        if self._fused_filter():
            return self._guide_path_fused(phi_x, batch.u, features)
        phi_x = phi_x.unbind(1)  # (B, feat) per step; unbind, not phi_x[:, t]
        u = [None] * T if batch.u is None else batch.u.unbind(1)
        state = self.recurrence.initial(B)
        locs, scales, zs, phi_zs, hs = [], [], [], [], []
        for t in range(T):
            h = Recurrence.output(state)
            loc, scale = self.posterior(torch.cat([phi_x[t], h], -1))
            z = loc + torch.empty_like(loc).normal_() * scale  # (B, z_dim), as Normal.rsample
            phi_z = self.phi_z(z)
            locs.append(loc), scales.append(scale), zs.append(z), phi_zs.append(phi_z), hs.append(h)
            if t + 1 < T:
                state = self.recurrence(torch.cat([phi_x[t], phi_z] + ([] if u[t] is None else [u[t]]), -1), state)
        out = (torch.stack(locs, 1), torch.stack(scales, 1), torch.stack(zs, 1))
        return out + ((torch.stack(phi_zs, 1), torch.stack(hs, 1)),) if features else out

    def _fused_filter(self) -> bool:
        """Whether :meth:`guide_path` can run as one fused node (a ReLU RNN cell with biases)."""
        cell = self.recurrence.cell
        return isinstance(cell, nn.RNNCell) and cell.nonlinearity == "relu" and cell.bias

    def _guide_path_fused(self, phi_x, u, features: bool):
        """:meth:`guide_path` for a ReLU RNN cell as one autograd node (``dvae.nn._VRNNFilterScan``): what
        the step loop computes, up to float rounding, with the same gradients; the parts of each step
        that read x_t and u_t alone (the posterior's first layer on phi_x(x_t), the cell's input
        weights on phi_x(x_t) and u_t) computed for every step at once."""
        B, T, feat = phi_x.shape
        cell, post1, post2 = self.recurrence.cell, self.posterior.net[0], self.posterior.net[2]
        w_ih = cell.weight_ih  # (H, feat + feat + u_dim): the columns of [phi_x, phi_z, u]
        ax = F.linear(phi_x, post1.weight[:, :feat], post1.bias)  # (B, T, Hp)
        rx = F.linear(phi_x, w_ih[:, :feat], cell.bias_ih + cell.bias_hh)  # (B, T, H)
        if u is not None:
            rx = rx + F.linear(u, w_ih[:, 2 * feat:])
        eps = phi_x.new_empty(T, B, self.config.z_dim)
        for t in range(T):  # the same normals in the same order as the step loop
            eps[t].normal_()
        h0 = Recurrence.output(self.recurrence.initial(B))  # (B, H)
        wh = torch.cat([post1.weight[:, feat:], cell.weight_hh], 0)  # (Hp + H, H): both read h_{t-1}
        outs = _VRNNFilterScan.apply(ax.transpose(0, 1).contiguous(), rx.transpose(0, 1).contiguous(), h0, eps,
                                     wh, post2.weight, post2.bias, self.phi_z[0].weight, self.phi_z[0].bias,
                                     w_ih[:, feat:2 * feat])  # loc, scale, z, phi_z, h_{t-1}: (T, B, .) each
        loc, scale, z, phi_z, h_prev = (v.transpose(0, 1) for v in outs)  # (B, T, .) each
        return (loc, scale, z, (phi_z, h_prev)) if features else (loc, scale, z)

    def guide_vectorized(self, batch: SequenceBatch, annealing_factor: float = 1.0):
        """q(z | x, u), filtering, with the path as one site. Returns the sampled path (B, T, z_dim)."""
        pyro.module("vrnn", self)
        loc, scale, path, feats = self.guide_path(batch, features=True)
        _GUIDE_FEATURES[path] = (self, batch.x, batch.u, feats)  # for model_vectorized; dies with the path
        with pyro.plate("sequences", batch.batch_size, dim=-1):
            with poutine.scale(scale=annealing_factor):
                return pyro.sample("z", GuidePath(loc, scale, path, batch.mask))

    def _predict_samples(self, context: SequenceBatch, u_future, horizon: int):
        N, C = context.batch_size, context.num_steps
        z_path = self.guide(context)  # (N, C, z_dim)
        last = (context.lengths - 1).clamp(min=0)
        state = self.recurrence.initial(N)
        for t in range(C):  # rebuild h along the context; the last real step takes u_future[:, 0]
            u_t = self._u(context, t)
            if u_t is not None:
                u_t = torch.where((last == t)[:, None], u_future[:, 0], u_t)
            new = self._step(context.x[:, t], z_path[:, t], u_t, state, self._obs_mask(context, t))
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
