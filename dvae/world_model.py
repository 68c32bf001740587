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
a step moves nothing between the host and the device except the action it is given, and reads nothing
back: the distributions of a step are built without argument validation (the states come from the
model itself), which would read every parameter tensor back to check it (tests/test_world_model.py
counts the reads).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyro
import torch

from dvae.data.batch import collate
from dvae.models.base import repeat_batch


class WorldModel:
    """N imagined rollouts of a trained model, in the data's units."""

    def __init__(self, model, normalizer, sample: bool = True):
        if getattr(model.config, "c_dim", 0):
            raise ValueError("a conditional model (c_dim > 0) cannot be used as a world model yet")
        if getattr(model, "step_by_step_problem", None):
            raise ValueError(model.step_by_step_problem)
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
        with pyro.validation_enabled(False):
            self.state, self._y = self.model.posterior_last(batch)
        self.x = torch.as_tensor(x_history[-1], dtype=self.dtype, device=self.device).expand(num_samples, -1).clone()
        return self.x

    @torch.no_grad()
    def reset_prior(self, num_samples: int = 1) -> torch.Tensor:
        """Start ``num_samples`` rollouts from the model's prior p(z_0), p(x_0 | z_0): returns x_0
        (N, x_dim), data units."""
        with pyro.validation_enabled(False):
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
        with pyro.validation_enabled(False):
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


# --- real envs' spaces against a model ---------------------------------------------------------------
def spaces_problem(model, observation_space, action_space, env_id: str = "the env") -> Optional[str]:
    """Why a model cannot stand in for (or plan in) an env with these Gymnasium spaces, or None: its
    observations must be vectors of the model's x_dim; a Box action space must have the model's u_dim
    entries, a Discrete(n) one a model trained on its actions one-hot (u_dim n, as ``dvae collect``
    records and the loaders encode them); an uncontrolled model (u_dim 0) takes no actions. A run that
    records the kind of its actions (``ModelConfig.actions``) stands in only for envs of that kind."""
    x_dim, u_dim = model.config.x_dim, model.config.u_dim
    trained_on = getattr(model.config, "actions", None)  # None: no controls, or a run older than the record
    obs_shape = tuple(getattr(observation_space, "shape", None) or ())
    if obs_shape != (x_dim,):
        return f"{env_id}: observations of shape {obs_shape}, but the run's model has x_dim {x_dim}"
    kind = type(action_space).__name__
    if kind == "Discrete":
        if trained_on == "continuous":
            return (f"{env_id}: discrete actions, but the run's model was trained on continuous controls "
                    f"(u_dim {u_dim})")
        if u_dim != int(action_space.n):
            return (f"{env_id}: {int(action_space.n)} discrete actions, but the run's model has u_dim {u_dim} "
                    f"(a model of discrete actions reads them one-hot: u_dim = the number of actions)")
        return None
    if kind != "Box":
        return f"{env_id}: action space {action_space} is neither Box nor Discrete"
    if trained_on == "discrete":
        return (f"{env_id}: continuous actions (Box), but the run's model was trained on discrete actions "
                f"read one-hot (u_dim {u_dim})")
    if u_dim == 0:
        return f"{env_id}: the run's model takes no controls (u_dim 0), so it cannot respond to actions"
    if int(np.prod(action_space.shape)) != u_dim:
        return f"{env_id}: actions of shape {tuple(action_space.shape)}, but the run's model has u_dim {u_dim}"
    return None


def encode_actions(action_space, actions, n: int) -> np.ndarray:
    """Actions of ``n`` rollouts as the model reads them, (n, u_dim) float32: Discrete actions (n,)
    integers one-hot; Box actions (n,) + shape, clipped to the space's bounds (as the real env's
    dynamics clip them). ValueError for None, NaN, non-numbers, values outside a Discrete space or a
    shape other than (n,) + the space's shape (nothing is reshaped)."""
    if actions is None:
        raise ValueError("an action is required (got None)")
    a = np.asarray(actions)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
        raise ValueError(f"actions must be real numbers, got dtype {a.dtype}")
    if type(action_space).__name__ == "Discrete":
        if a.shape != (n,):
            raise ValueError(f"expected {n} discrete action(s) of shape ({n},), got shape {a.shape}")
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"discrete actions must be integers, got {a.tolist()}")
        k, start = int(action_space.n), int(getattr(action_space, "start", 0))
        idx = a.astype(np.int64) - start
        if np.any((idx < 0) | (idx >= k)):
            raise ValueError(f"discrete actions must lie in {start}..{start + k - 1}, got {a.tolist()}")
        return np.eye(k, dtype=np.float32)[idx]  # (n, k)
    shape = (n,) + tuple(action_space.shape)
    if a.shape != shape:
        raise ValueError(f"expected actions of shape {shape}, got {a.shape}")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"actions must be finite, got {a.tolist()}")
    return np.clip(a, action_space.low, action_space.high).reshape(n, -1)  # (n, u_dim)
