"""Rewards (and terminations) as functions of (observation, action), for envs whose reward is known.

A learned world model predicts observations; these functions turn them into rewards, so a planner
can score imagined rollouts. Each takes batched arrays (numpy or torch): ``obs`` (..., obs_dim),
``action`` (..., act_dim), and returns (...,).
"""

from __future__ import annotations


import numpy as np


def _lib(x):
    import torch

    return torch if torch.is_tensor(x) else np


def pendulum_reward(obs, action):
    """Pendulum-v1: -(theta^2 + 0.1 theta_dot^2 + 0.001 u^2), theta wrapped to [-pi, pi), from the
    observation (cos theta, sin theta, theta_dot) the action is taken in; u clipped to [-2, 2]."""
    lib = _lib(obs)
    theta = lib.arctan2(obs[..., 1], obs[..., 0])
    u = lib.clip(action[..., 0], -2.0, 2.0)
    return -(theta ** 2 + 0.1 * obs[..., 2] ** 2 + 0.001 * u ** 2)


REWARDS = {"Pendulum-v1": pendulum_reward}


def reward_fn(env_id: str):
    """The known reward function of ``env_id``; ValueError if none is registered."""
    if env_id not in REWARDS:
        raise ValueError(f"no known reward function for {env_id!r} (known: {', '.join(REWARDS)})")
    return REWARDS[env_id]
