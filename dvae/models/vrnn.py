"""The variational RNN (Chung et al. 2015), with controls.

A deterministic recurrence h_t = f(phi_x(x_t), phi_z(z_t), u_t, h_{t-1}) carries the history;
the latent at each step is drawn from a prior that reads it::

    z_t ~ N(Prior(h_{t-1}))
    x_t ~ Emitter(phi_z(z_t), h_{t-1})
    h_t = f(phi_x(x_t), phi_z(z_t), u_t, h_{t-1})

Guide: q(z_t | x_t, h_{t-1}) = N(Posterior(phi_x(x_t), h_{t-1})), filtering, sharing f with the model.

The family states this once, as the contract of :class:`~dvae.models.base.DynamicalVAE`: the state is
(z_t, the recurrence's state h_{t-1}); ``initial_state`` and ``transition_step`` give p(z_t | h_{t-1})
after the update h_{t-1} = f(x_{t-1}, z_{t-1}, u_{t-1}, h_{t-2}); ``emission`` p(x_t | z_t, h_{t-1});
``filter_step`` the guide's q(z_t | x_t, h_{t-1}). The per-step model and guide, prediction, the world
model and the particle filter are written over those.

Missing entries (a batch's ``obs_mask``): the recurrence of the MODEL reads x_t too, so where entries
are missing it reads them as the inference networks do, 0 (and, with ``config.missing``, the mask
beside them): the program is then a model of the observed entries given which ones are observed,
and its ELBO a bound on log p(x_obs | obs_mask).

The time-vectorized form (``model_vectorized``/``guide_vectorized``): the path is one site ``"z"``
(B, T, z_dim), the observations one site ``"x"``. The guide runs the recurrence step by step (h_t
needs z_t; with a ReLU RNN cell the whole loop is one fused autograd node, ``dvae.nn.VRNNFilterScan``). The model, given the replayed path and the observed x, needs h_{t-1} for every t: for the
path the guide just drew it reuses the guide's (the same function of the same inputs, so the same
value and gradients, one recurrence instead of two); for any other path it knows every input of the
recurrence in advance and runs it as one multi-step RNN call (``Recurrence.scan``). Then the prior and
the emitter of every step run in one batched call each. Its ``"z"`` site is the product of
p(z_t | h_{t-1}) with h built from the OBSERVED x_{<t}, so the vectorized model is a scoring program:
it cannot run unconditioned (``generate`` and ``predict`` use the per-step program).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.weak import WeakTensorKeyDictionary

from dvae.data.batch import SequenceBatch
from dvae.models.base import DynamicalVAE, ModelConfig, observation_dist
from dvae.models.state import State
from dvae.models.paths import GuidePath, PriorPath
from dvae.nn import Emitter, GaussianHead, Recurrence, VRNNFilterScan

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
        self.emitter = Emitter(feat + c.rnn_dim, c.x_dim, c.emission_dim, c.likelihood, c.emission_scale)  # p(x_t | z_t, h_{t-1})
        self.recurrence = Recurrence(c.rnn_type, 2 * feat + c.u_dim, c.rnn_dim)  # h_t

    def _step(self, x_t, z_t, u_t, state, obs_mask_t=None):
        parts = [self.phi_x(self.x_input(x_t, obs_mask_t)), self.phi_z(z_t)] + ([] if u_t is None else [u_t])
        return self.recurrence(torch.cat(parts, -1), state)

    # --- the contract: the dynamics, stated once -----------------------------------------------------
    def _prior_dist(self, rec):
        loc, scale = self.prior(Recurrence.output(rec))  # (n, z_dim) each
        return dist.Normal(loc, scale).to_event(1)

    def initial_state(self, n: int, c=None):
        """h_{-1} the learned initial state of the recurrence; p(z_0 | h_{-1})."""
        rec = self.recurrence.initial(n)
        return {"rec": rec}, self._prior_dist(rec)

    def transition_step(self, state: State, x, u=None, obs_mask=None):
        """h_{t-1} = f(phi_x(x_{t-1}), phi_z(z_{t-1}), u_{t-1}, h_{t-2}); p(z_t | h_{t-1})."""
        rec = self._step(x, state["z"], u, state["rec"], obs_mask)
        return {"rec": rec}, self._prior_dist(rec)

    def emission(self, state: State, obs_mask=None):
        """p(x_t | z_t, h_{t-1})."""
        features = torch.cat([self.phi_z(state["z"]), Recurrence.output(state["rec"])], -1)
        return observation_dist(self.emitter(features), self.config.likelihood, obs_mask)

    def filter_step(self, state: State, x, obs_mask=None):
        """The guide's q(z_t | x_t, h_{t-1})."""
        phi_x = self.phi_x(self.x_input(x, obs_mask))
        loc, scale = self.posterior(torch.cat([phi_x, Recurrence.output(state["rec"])], -1))
        return dist.Normal(loc, scale).to_event(1)

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

    def _features(self, batch: SequenceBatch, z):
        """(phi_z(z), h_{t-1}) along the path z: the guide's, when z is the path the guide just drew
        from this batch (the same function of the same inputs, with their autograd graph: the same
        value and gradients, one recurrence instead of two), else the recurrence run on z."""
        hit = _GUIDE_FEATURES.get(z)
        if hit is not None and hit[0] is self and hit[1] is batch.x and hit[2] is batch.u:
            return hit[3]
        return self.path_features(self.phi_x(self.x_input(batch.x, batch.obs_mask)), z, batch.u)

    def prior_path(self, batch: SequenceBatch) -> PriorPath:
        """p(z_t | h_{t-1}) at every step along a given path, h built from the OBSERVED x_{<t}: a scoring
        distribution (it cannot be sampled: ``generate`` and ``predict`` use the contract step by step)."""
        return PriorPath(lambda z: self.prior(self._features(batch, z)[1]), (batch.batch_size, batch.num_steps,
                                                                             self.config.z_dim), batch.mask)

    def emission_path(self, batch: SequenceBatch, z):
        """p(x_t | z_t, h_{t-1}) of every step along the path z: batch (B, T)."""
        return observation_dist(self.emitter(torch.cat(self._features(batch, z), -1)), self.config.likelihood,
                                batch.obs_mask)

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
        """:meth:`guide_path` for a ReLU RNN cell as one autograd node (``dvae.nn.VRNNFilterScan``): what
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
        outs = VRNNFilterScan.apply(ax.transpose(0, 1).contiguous(), rx.transpose(0, 1).contiguous(), h0, eps,
                                     wh, post2.weight, post2.bias, self.phi_z[0].weight, self.phi_z[0].bias,
                                     w_ih[:, feat:2 * feat])  # loc, scale, z, phi_z, h_{t-1}: (T, B, .) each
        loc, scale, z, phi_z, h_prev = (v.transpose(0, 1) for v in outs)  # (B, T, .) each
        return (loc, scale, z, (phi_z, h_prev)) if features else (loc, scale, z)

    def posterior_path(self, batch: SequenceBatch) -> GuidePath:
        """The guide's path (filtering), its recurrence kept for :meth:`emission_path` and :meth:`prior_path`."""
        loc, scale, path, feats = self.guide_path(batch, features=True)
        _GUIDE_FEATURES[path] = (self, batch.x, batch.u, feats)  # dies with the path
        return GuidePath(loc, scale, path, batch.mask)
