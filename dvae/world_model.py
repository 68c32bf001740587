"""A trained model as a step-by-step world model: filter on a real history, then imagine forward.

``WorldModel(model, normalizer)`` keeps N parallel imagined rollouts. ``reset(x_history, u_history)``
conditions on real observations (data units) through the model's guide (or, for the LGSSM, the
Kalman smoother) and samples the latent state after the last observation; ``reset_prior(N)``
starts from the prior. ``step(u)`` applies one control (data units) and returns the next observation
(sampled, or the emitter mean). Every family is supported through a small adapter that exposes its
recurrent state:

- DMM: z_t; step: z_{t+1} ~ p(z | z_t, u_t), x_{t+1} ~ p(x | z_{t+1}).
- VRNN: (h_{t-1}, x_t, z_t); step: h_t = f(x_t, z_t, u_t, h_{t-1}), z_{t+1} ~ p(z | h_t), x_{t+1} ~ p(x | z_{t+1}, h_t).
- VRAE: the decoder's state s_t (the code z fixed by the history); step: s_{t+1} = RNN(u_t, s_t).
- LGSSM: z_t; step: z_{t+1} = A z_t + B u_t + w, x_{t+1} = C z_{t+1} + v.
- VAE (static baseline): no state; step: z ~ N(0, I), x ~ p(x | z), whatever the history and u.
"""

from __future__ import annotations


import pyro.distributions as dist
import torch
import torch.nn as nn

from dvae.data.batch import collate
from dvae.models.base import observation_dist, repeat_batch
from dvae.nn import Recurrence


class WorldModel:
    """N imagined rollouts of a trained model, in the data's units."""

    def __init__(self, model, normalizer, sample: bool = True):
        if getattr(model.config, "c_dim", 0):
            raise ValueError("a conditional model (c_dim > 0) cannot be used as a world model yet")
        self.model, self.norm, self.sample = model.eval(), normalizer, sample
        self.device = model.device
        self.state = None
        self.x = None  # the current observation of each rollout, (N, x_dim), data units

    # --- units -------------------------------------------------------------------------------------
    def _x_in(self, x):
        m = torch.tensor(self.norm.x_mean, device=self.device)
        s = torch.tensor(self.norm.x_std, device=self.device)
        return (torch.as_tensor(x, dtype=torch.float32, device=self.device) - m) / s

    def _u_in(self, u):
        if u is None or self.model.config.u_dim == 0:
            return None
        u = torch.as_tensor(u, dtype=torch.float32, device=self.device)
        if self.norm.u_mean is None:
            return u
        return (u - torch.tensor(self.norm.u_mean, device=self.device)) / torch.tensor(self.norm.u_std, device=self.device)

    # --- reset -------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset(self, x_history, u_history=None, num_samples: int = 1) -> torch.Tensor:
        """Condition on one real history: x (C, x_dim), u (C - 1, u_dim) (the controls between the
        observations), and draw ``num_samples`` latent states after x_{C-1}. Returns x_{C-1} repeated
        (N, x_dim)."""
        x = self._x_in(x_history)  # (C, x_dim)
        C = x.shape[0]
        u_dim = self.model.config.u_dim
        u = None
        if u_dim:
            u_hist = self._u_in(u_history) if u_history is not None and len(u_history) else x.new_zeros(0, u_dim)
            u = torch.cat([u_hist.reshape(-1, u_dim), x.new_zeros(1, u_dim)], 0)  # (C, u_dim): the last one unknown yet
            assert u.shape[0] == C, (u.shape, C)
        batch = repeat_batch(collate([x.cpu()], None if u is None else [u.cpu()]).to(self.device), num_samples)
        self.state = getattr(self, f"_init_{self.model.name}")(batch)
        self.x = torch.as_tensor(x_history[-1], dtype=torch.float32, device=self.device).expand(num_samples, -1).clone()
        return self.x

    @torch.no_grad()
    def reset_prior(self, num_samples: int = 1) -> torch.Tensor:
        """Start ``num_samples`` rollouts from the model's prior: returns x_0 (N, x_dim), data units."""
        g = self.model.generate(1, u=None if not self.model.config.u_dim else
                                torch.zeros(1, self.model.config.u_dim, device=self.device), num_samples=num_samples)
        x0 = g["x"][:, 0] if self.sample else g["x_mean"][:, 0]
        return self.reset_from_generated(x0)

    def reset_from_generated(self, x0_std):
        x0 = self.norm.x_inverse(x0_std)
        N = x0.shape[0]
        batch = collate([x0_std[i:i + 1].cpu() for i in range(N)],
                        None if not self.model.config.u_dim else
                        [torch.zeros(1, self.model.config.u_dim) for _ in range(N)]).to(self.device)
        self.state = getattr(self, f"_init_{self.model.name}")(batch)
        self.x = x0
        return x0

    # --- step --------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, u=None) -> torch.Tensor:
        """Apply controls u (N, u_dim) (data units); returns the next observations (N, x_dim), data units."""
        u_in = self._u_in(u)
        self.state, x_dist = getattr(self, f"_step_{self.model.name}")(self.state, u_in)
        x = x_dist.sample() if self.sample else x_dist.mean
        if self.model.name == "vrnn":
            self.state["x"] = x
        self.x = self.norm.x_inverse(x)
        return self.x

    @torch.no_grad()
    def imagine(self, actions) -> torch.Tensor:
        """Roll out action sequences (N, H, u_dim) from the current state: observations (N, H, x_dim)."""
        return torch.stack([self.step(actions[:, k]) for k in range(actions.shape[1])], 1)

    def save(self):
        return self.state, self.x

    def restore(self, saved):
        self.state, self.x = saved

    # --- adapters ----------------------------------------------------------------------------------
    def _last(self, path, batch):
        return path[torch.arange(batch.batch_size, device=path.device), (batch.lengths - 1).clamp(min=0)]

    def _init_dmm(self, batch):
        return {"z": self._last(self.model.guide(batch), batch)}

    def _step_dmm(self, state, u):
        m = self.model
        loc, scale = m.transition(state["z"], u)
        z = dist.Normal(loc, scale).sample()
        return {"z": z}, observation_dist(m.emitter(z), m.config.likelihood)

    def _init_vrnn(self, batch):
        m = self.model
        z_path = m.guide(batch)  # (N, C, z_dim)
        h_state = m.recurrence.initial(batch.batch_size)
        C = batch.num_steps
        for t in range(C - 1):
            h_state = m._step(batch.x[:, t], z_path[:, t], m._u(batch, t), h_state)
        return {"h": h_state, "x": batch.x[:, C - 1], "z": z_path[:, C - 1]}

    def _step_vrnn(self, state, u):
        m = self.model
        h_state = m._step(state["x"], state["z"], u, state["h"])
        h = Recurrence.output(h_state)
        loc, scale = m.prior(h)
        z = dist.Normal(loc, scale).sample()
        x_dist = observation_dist(m.emitter(torch.cat([m.phi_z(z), h], -1)), m.config.likelihood)
        return {"h": h_state, "x": None, "z": z}, x_dist

    def _init_vrae(self, batch):
        m = self.model
        z = m.guide(batch)  # (N, z_dim)
        s_0 = torch.tanh(m.z_to_state(z))[None]  # (1, N, rnn_dim)
        hidden = (s_0, torch.zeros_like(s_0)) if isinstance(m.decoder, nn.LSTM) else s_0
        _, hidden = m.decoder(m._shifted_controls(batch), hidden)
        return {"s": hidden}

    def _step_vrae(self, state, u):
        m = self.model
        u_in = u if u is not None else torch.zeros(Recurrence.output(state["s"]).shape[1], 1, device=self.device)
        out, hidden = m.decoder(u_in[:, None], state["s"])
        return {"s": hidden}, observation_dist(m.emitter(out[:, 0]), m.config.likelihood)

    def _init_lgssm(self, batch):
        loc, cov = self.model.smooth(batch)
        loc, cov = self._last(loc, batch), self._last(cov, batch)
        return {"z": dist.MultivariateNormal(loc, 0.5 * (cov + cov.transpose(-1, -2))).sample()}

    def _step_lgssm(self, state, u):
        A, Bm, C, Q, R, _, _ = self.model.params()
        z = state["z"] @ A.T + (u @ Bm.T if u is not None else 0.0)
        z = z + dist.MultivariateNormal(torch.zeros_like(z), Q).sample()
        return {"z": z}, dist.MultivariateNormal(z @ C.T, R)

    def _init_vae(self, batch):
        return {"n": batch.batch_size}  # frame-wise: nothing carries over from the history

    def _step_vae(self, state, u):
        m = self.model
        z = torch.randn(state["n"], m.config.z_dim, device=self.device)  # (N, z_dim) ~ N(0, I)
        return state, observation_dist(m.emitter(z), m.config.likelihood)
