"""A trained model as a step-by-step world model: filter on a real history, then imagine forward.

``WorldModel(model, normalizer)`` keeps N parallel imagined rollouts of any model that states the
state-space contract of :class:`dvae.models.base.DynamicalVAE` (every family of the package, and a
user's own). ``reset(x_history, u_history)`` conditions on real observations (data units) through
``model.posterior_last`` (the guide's posterior; for the LGSSM the Kalman smoother) and keeps the state
after the last observation; ``reset_prior(N)`` starts from p(z_0) (``initial_state``). ``step(u)``
applies one control (data units) through ``model.imagine_step`` (``transition_step``, then
``emission``) and returns the next observation: sampled, or with ``sample=False`` the mean of the
latent's and of the observation's distribution at every step (a deterministic rollout).

Units: the normaliser's statistics are put on the model's device once, when the world model is made;
a step moves nothing between the host and the device except the action it is given.
"""

from __future__ import annotations

from typing import Optional

import torch

from dvae.data.batch import collate
from dvae.models.base import repeat_batch


class WorldModel:
    """N imagined rollouts of a trained model, in the data's units."""

    def __init__(self, model, normalizer, sample: bool = True):
        if getattr(model.config, "c_dim", 0):
            raise ValueError("a conditional model (c_dim > 0) cannot be used as a world model yet")
        self.model, self.norm, self.sample = model.eval(), normalizer, sample
        kind = model.tensor_kind
        self.device, self.dtype = kind["device"], kind["dtype"]
        self.x_dim, self.u_dim = model.config.x_dim, model.config.u_dim
        self._x_mean = torch.tensor(normalizer.x_mean, **kind)  # (x_dim,)
        self._x_std = torch.tensor(normalizer.x_std, **kind)
        has_u_stats = self.u_dim and normalizer.u_mean is not None
        self._u_mean = torch.tensor(normalizer.u_mean, **kind) if has_u_stats else None  # (u_dim,) or None
        self._u_std = torch.tensor(normalizer.u_std, **kind) if has_u_stats else None
        self.state = None  # the model's state of each rollout (a dict of (N, ...) tensors)
        self._y = None  # the current observation of each rollout, (N, x_dim), model units
        self.x = None  # the same in data units

    # --- units -------------------------------------------------------------------------------------
    def _x_in(self, x) -> torch.Tensor:
        return (torch.as_tensor(x, dtype=self.dtype, device=self.device) - self._x_mean) / self._x_std

    def _x_out(self, y: torch.Tensor) -> torch.Tensor:
        return y * self._x_std + self._x_mean

    def _u_in(self, u) -> Optional[torch.Tensor]:
        if u is None or self.u_dim == 0:
            return None
        u = torch.as_tensor(u, dtype=self.dtype, device=self.device)
        return u if self._u_mean is None else (u - self._u_mean) / self._u_std

    # --- reset -------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset(self, x_history, u_history=None, num_samples: int = 1) -> torch.Tensor:
        """Condition on one real history: x (C, x_dim), u (C - 1, u_dim) (the controls between the
        observations), and draw ``num_samples`` states after x_{C-1}. Returns x_{C-1} repeated
        (N, x_dim)."""
        x = self._x_in(x_history)  # (C, x_dim)
        if x.dim() != 2 or x.shape[1] != self.x_dim or x.shape[0] < 1:
            raise ValueError(f"x_history must have shape (C, {self.x_dim}) with C >= 1, got {tuple(x.shape)}")
        C = x.shape[0]
        u = None
        if self.u_dim:
            u_hist = self._u_in(u_history) if u_history is not None and len(u_history) else x.new_zeros(0, self.u_dim)
            if u_hist.dim() != 2 or u_hist.shape != (C - 1, self.u_dim):
                raise ValueError(f"u_history must have shape ({C - 1}, {self.u_dim}) (the controls between the "
                                 f"{C} observations), got {tuple(u_hist.shape)}")
            u = torch.cat([u_hist, x.new_zeros(1, self.u_dim)], 0)  # (C, u_dim): the last one is not known yet
        batch = collate([x.cpu()], None if u is None else [u.cpu()]).to(self.device)  # collate builds on the host
        batch = repeat_batch(batch, num_samples)
        self.state, self._y = self.model.posterior_last(batch)
        self.x = torch.as_tensor(x_history[-1], dtype=self.dtype, device=self.device).expand(num_samples, -1).clone()
        return self.x

    @torch.no_grad()
    def reset_prior(self, num_samples: int = 1) -> torch.Tensor:
        """Start ``num_samples`` rollouts from the model's prior p(z_0), p(x_0 | z_0): returns x_0
        (N, x_dim), data units."""
        state, p_z = self.model.initial_state(num_samples)
        self.state = self.model.with_latent(state, p_z.sample() if self.sample else p_z.mean)
        p_x = self.model.emission(self.state)
        self._y = p_x.sample() if self.sample else p_x.mean
        self.x = self._x_out(self._y)
        return self.x

    # --- step --------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, u=None) -> torch.Tensor:
        """Apply controls u (N, u_dim) (data units); returns the next observations (N, x_dim), data units."""
        if self.state is None:
            raise RuntimeError("call reset() or reset_prior() before step()")
        self.state, self._y, _ = self.model.imagine_step(self.state, self._y, self._u_in(u), sample=self.sample)
        self.x = self._x_out(self._y)
        return self.x

    @torch.no_grad()
    def imagine(self, actions) -> torch.Tensor:
        """Roll out action sequences (N, H, u_dim) from the current state: observations (N, H, x_dim)."""
        return torch.stack([self.step(actions[:, k]) for k in range(actions.shape[1])], 1)

    def save(self):
        """The rollouts' current state, for :meth:`restore` (states are never changed in place)."""
        return self.state, self._y, self.x

    def restore(self, saved):
        self.state, self._y, self.x = saved
