"""Run as a world model: :meth:`Run.world_model`, :meth:`Run.env` (a Gymnasium env of imagined
dynamics) and :meth:`Run.plan` (``dvae plan``: model-predictive control in the real env)."""

from __future__ import annotations

from typing import Optional

import numpy as np


class Acting:
    """The methods of :class:`dvae.trained.Run` that act: imagined rollouts and planning."""

    def world_model(self, num_envs: int = 1, sample: bool = True, history=None, *, seed: Optional[int] = None):
        """A :class:`dvae.world_model.WorldModel` of ``num_envs`` imagined rollouts, already reset: from
        the prior, or filtered on ``history`` = (x (C, x_dim), u (C-1, u_dim) or None). Then
        ``step(u)`` takes controls (num_envs, u_dim) and returns observations (num_envs, x_dim), data units."""
        from dvae.world_model import WorldModel

        if num_envs < 1:
            raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
        world = WorldModel(self.model, self.normalizer, sample=sample)
        self._seed(seed)
        if history is None:
            world.reset_prior(num_envs)
        else:
            if not isinstance(history, (tuple, list)) or len(history) != 2:
                raise ValueError(f"history: expected (x (C, x_dim), u (C-1, u_dim) or None), got {type(history).__name__}")
            x, _ = self._x(history[0], "history[0]")
            u = self._u(history[1], "history[1]", 1, x.shape[1] - 1, required=x.shape[1] > 1)
            world.reset(x[0], None if u is None else u[0], num_samples=num_envs)
        return world

    def env(self, env_id: Optional[str] = None, **kwargs):
        """A Gymnasium env of imagined dynamics: ``gym.make("dvae/WorldModel-v0", run=self, env_id=...)``
        (``env_id``: the real env whose action space and reward it takes, e.g. Pendulum-v1)."""
        import gymnasium as gym

        import envs  # noqa: F401  (registers dvae/WorldModel-v0)

        return gym.make("dvae/WorldModel-v0", run=self, env_id=env_id, **kwargs)

    def plan(self, env_id: str, episodes: int = 3, planner: str = "cem", horizon: int = 25, num_samples: int = 300,
             iterations: int = 4, history: int = 16, max_steps: int = 200, baselines: bool = True, seed: int = 0,
             save_episodes: Optional[str] = None) -> dict:
        """Model-predictive control in the real env ``env_id`` with this model (``dvae plan``'s keys):
        ``mean_return``, ``returns``, ``baselines`` (random, true_model), ``normalized_return``."""
        import time

        from dvae.control import PlannerConfig
        from dvae.planning import model_policy, random_policy, run_episodes, true_policy
        from envs.rewards import reward_fn
        from envs.simulators import true_returns

        for name, value in (("episodes", episodes), ("horizon", horizon), ("num_samples", num_samples),
                            ("iterations", iterations), ("history", history), ("max_steps", max_steps)):
            if value < 1:
                raise ValueError(f"{name}: expected >= 1, got {value}")
        if horizon < 2:
            raise ValueError(f"horizon: expected >= 2, got {horizon}")
        if planner not in ("cem", "mppi"):
            raise ValueError(f"planner: expected cem or mppi, got {planner!r}")
        reward = reward_fn(env_id)
        pc = PlannerConfig(horizon=horizon, num_samples=num_samples, iterations=iterations)
        t0 = time.perf_counter()
        record = [] if save_episodes else None
        returns = run_episodes(env_id, model_policy(self.model, self.normalizer, reward, planner, pc, seed, history),
                               episodes, seed, max_steps, record=record)
        out = {"run_dir": self.run_dir, "env": env_id, "planner": planner, "episodes": episodes,
               "mean_return": float(np.mean(returns)), "returns": returns, "seconds": time.perf_counter() - t0,
               "baselines": {}}
        if save_episodes:
            from dvae.planning import episodes_to_trajectories
            from envs import save_npz

            save_npz(save_episodes, episodes_to_trajectories(record, env_id, seed, f"{planner} on {self.run_dir}"))
            out["saved_episodes"] = save_episodes
        if baselines:
            rnd = run_episodes(env_id, random_policy(seed), episodes, seed, max_steps)
            out["baselines"]["random"] = {"mean_return": float(np.mean(rnd)), "returns": rnd}
            factory = true_returns(env_id)
            if factory is not None:
                tr = run_episodes(env_id, true_policy(factory, planner, pc, seed), episodes, seed, max_steps)
                out["baselines"]["true_model"] = {"mean_return": float(np.mean(tr)), "returns": tr}
                gap = out["baselines"]["true_model"]["mean_return"] - out["baselines"]["random"]["mean_return"]
                if gap != 0:
                    out["normalized_return"] = (out["mean_return"] - out["baselines"]["random"]["mean_return"]) / gap
        return out
