"""True simulators for planning baselines: an env's batched dynamics as a returns function.

``true_returns(env_id)`` gives ``make(env) -> returns(actions (N, H, u_dim)) -> (N,)`` that rolls the
real env's current state forward under each candidate sequence with the env's own (batched, pure)
dynamics: the "true model" a planner with a learned model is measured against.
"""

from __future__ import annotations

import numpy as np

from envs import pixel_pendulum


def _pendulum(env):
    state = np.array(env.unwrapped.state, dtype=np.float64)  # (theta, theta_dot)

    def returns(actions):
        import torch

        a = actions.detach().cpu().numpy() if torch.is_tensor(actions) else np.asarray(actions)
        s = np.broadcast_to(state, (a.shape[0], 2))
        total = np.zeros(a.shape[0])
        for k in range(a.shape[1]):
            total += pixel_pendulum.reward(s, a[:, k])
            s = pixel_pendulum.transition(s, a[:, k])
        out = torch.as_tensor(total, dtype=torch.float32)
        return out.to(actions.device) if torch.is_tensor(actions) else out

    return returns


SIMULATORS = {"Pendulum-v1": _pendulum}


def true_returns(env_id: str):
    """The batched-dynamics returns factory of ``env_id``, or None when the env offers none."""
    return SIMULATORS.get(env_id)
