"""Model-predictive control in a real Gymnasium env with a learned world model, and its baselines.

``run_episodes`` steps a real env with a policy; ``model_policy`` plans each action with CEM/MPPI on
imagined rollouts of a :class:`~dvae.world_model.WorldModel` filtered on the real history;
``true_policy`` plans with the env's own batched dynamics; ``random_policy`` samples the action space.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import gymnasium as gym
import numpy as np
import torch

from dvae.control import Planner, PlannerConfig
from dvae.world_model import WorldModel, spaces_problem


def run_episodes(env_id: str, make_policy: Callable, episodes: int, seed: int, max_steps: int = 200,
                 record: Optional[list] = None) -> List[float]:
    """Returns of ``episodes`` episodes (reset seeds seed, seed + 1, ...); ``make_policy(env, episode)``
    gives ``policy(obs, history) -> action`` with history = (observations, actions) so far.
    ``record``: a list to which each episode is appended as a dict of arrays ``obs`` (L+1, obs_dim),
    ``actions`` (L, act_dim), ``rewards`` (L,), ``terminated``, ``truncated`` (L,) bool."""
    import envs  # noqa: F401  (registers the dvae/ systems)

    env = gym.make(env_id)
    returns = []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            policy = make_policy(env, ep)
            xs, us, total = [np.asarray(obs, np.float32).ravel()], [], 0.0
            rs, terms, truncs = [], [], []
            for _ in range(max_steps):
                a = policy(obs, (np.stack(xs), np.stack(us) if us else None))
                obs, r, term, trunc, _ = env.step(a)
                total += float(r)
                us.append(np.asarray(a, np.float32).ravel())
                xs.append(np.asarray(obs, np.float32).ravel())
                rs.append(float(r)), terms.append(bool(term)), truncs.append(bool(trunc))
                if term or trunc:
                    break
            returns.append(total)
            if record is not None:
                record.append({"obs": np.stack(xs), "actions": np.stack(us), "rewards": np.asarray(rs, np.float32),
                               "terminated": np.asarray(terms), "truncated": np.asarray(truncs)})
    finally:
        env.close()
    return returns


def episodes_to_trajectories(episodes: list, env_id: str, seed: int, policy: str) -> dict:
    """Recorded episodes (see :func:`run_episodes`) in the trajectory .npz layout of ``dvae collect``:
    padded to the longest, with ``lengths``; the action bounds of the env's Box action space."""
    env = gym.make(env_id)
    low, high = _box(env)
    env.close()
    N, T = len(episodes), max(len(e["actions"]) for e in episodes)
    obs_dim, act_dim = episodes[0]["obs"].shape[1], episodes[0]["actions"].shape[1]
    obs = np.zeros((N, T + 1, obs_dim), np.float32)  # padding repeats the last observation
    actions = np.zeros((N, T, act_dim), np.float32)
    rewards = np.zeros((N, T), np.float32)
    terminated, truncated = np.zeros((N, T), bool), np.zeros((N, T), bool)
    lengths = np.array([len(e["actions"]) for e in episodes], np.int64)
    for i, e in enumerate(episodes):
        L = lengths[i]
        obs[i, :L + 1], obs[i, L + 1:] = e["obs"], e["obs"][-1]
        actions[i, :L], rewards[i, :L] = e["actions"], e["rewards"]
        terminated[i, :L], truncated[i, :L] = e["terminated"], e["truncated"]
    return {"obs": obs, "actions": actions, "rewards": rewards, "terminated": terminated, "truncated": truncated,
            "lengths": lengths, "env_id": np.array(env_id), "policy": np.array(policy),
            "seed": np.array(seed, np.int64), "action_low": low.astype(np.float32),
            "action_high": high.astype(np.float32)}


def random_policy(seed: int):
    def make(env, ep):
        env.action_space.seed(seed + ep)
        return lambda obs, history: env.action_space.sample()
    return make


def _box(env):
    space = env.action_space
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"planning needs a Box action space, got {space}")
    return space.low.ravel(), space.high.ravel()


def true_policy(true_returns_factory, kind: str, config: PlannerConfig, seed: int):
    """The planner on the real simulator: ``true_returns_factory(env)`` -> returns(actions)."""
    def make(env, ep):
        low, high = _box(env)
        planner = Planner(kind, low, high, config, generator=torch.Generator().manual_seed(seed + ep))
        return lambda obs, history: planner.act(true_returns_factory(env)).numpy().astype(env.action_space.dtype)
    return make


def model_policy(model, normalizer, reward, kind: str, config: PlannerConfig, seed: int, history: int = 16):
    """The planner on imagined rollouts: at each step the world model is filtered on the last
    ``history`` real observations, then ``num_samples`` candidate sequences are scored by
    reward(x_t, a_0) + sum_k reward(x^_{t+k}, a_k) with predicted observations (emitter means)."""
    def make(env, ep):
        problem = spaces_problem(model, env.observation_space, env.action_space, env.spec.id if env.spec else "the env")
        if problem:
            raise ValueError(problem)
        low, high = _box(env)
        planner = Planner(kind, low, high, config, device=model.device,
                          generator=torch.Generator().manual_seed(seed + ep))
        world = WorldModel(model, normalizer, sample=False)

        def policy(obs, hist):
            xs, us = hist
            xs = xs[-history:]
            us = None if us is None else us[len(us) - (len(xs) - 1):] if len(xs) > 1 else us[:0]
            torch.manual_seed(seed * 7919 + len(hist[0]))
            world.reset(xs, us, num_samples=config.num_samples)
            start = world.save()
            x_now = torch.as_tensor(xs[-1], dtype=torch.float32, device=model.device)

            def returns(actions):  # (N, H, u_dim)
                world.restore(start)
                imagined = world.imagine(actions[:, :-1])  # (N, H-1, x_dim): x_{t+1} .. x_{t+H-1}
                total = reward(x_now.expand(actions.shape[0], -1), actions[:, 0])
                return total + reward(imagined, actions[:, 1:]).sum(1)

            return planner.act(returns).cpu().numpy().astype(env.action_space.dtype)
        return policy
    return make
