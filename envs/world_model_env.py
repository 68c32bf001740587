"""A trained `dvae` model as a Gymnasium environment (``dvae/WorldModel-v0``).

Description:
    Imagined dynamics: observations come from a trained model's predictive distribution under the
    actions taken. Built from a run directory (``run_dir``) written by ``dvae train``, through the
    public ``dvae.run.load_model`` and ``dvae.world_model.WorldModel``, or from an in-memory
    ``dvae.Run`` (``run``; ``run.env(env_id)`` makes one).

Action Space:
    The real env's action space when ``env_id`` is given (e.g. Pendulum-v1's Box(-2, 2, (1,))),
    else an unbounded Box of the model's control dimension.

Observation Space:
    Box(-inf, inf, (x_dim,), float32), in the data's units.

Rewards:
    ``reward_fn(obs, action)`` of the observation the action is taken in: given, or the known one
    of ``env_id`` (``envs.rewards``), else 0.

Starting State:
    ``reset(options={"history": (x (C, x_dim), u (C - 1, u_dim))})`` filters the model on a real
    history and starts after its last observation; without it, x_0 is drawn from the model's prior.

Episode End:
    ``termination_fn(obs) -> bool`` if given; truncation by the TimeLimit of the registration (200).

Arguments:
    run_dir or run (exactly one), env_id=None, reward_fn=None, termination_fn=None, sample=True
    (sampled observations; False: the emitter means), device="cpu".

Randomness comes only from ``reset(seed=...)``: each sampling step runs under a torch seed drawn
from ``self.np_random``. ``WorldModelVectorEnv`` runs ``num_envs`` imagined rollouts in one batch on
the model's device (no autoreset: call ``reset`` after truncation).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector.utils import batch_space


def _load(run_dir, run, device):
    """(model, normaliser, WorldModel) of a run directory or of an in-memory ``dvae.Run``."""
    from dvae.world_model import WorldModel

    if (run_dir is None) == (run is None):
        raise ValueError("dvae/WorldModel-v0: give run_dir (a run directory) or run (a dvae.Run), exactly one")
    if run is not None:
        if not (hasattr(run, "model") and hasattr(run, "normalizer")):
            raise ValueError(f"dvae/WorldModel-v0: run must be a dvae.Run, got {type(run).__name__}")
        return run.model.to(device), run.normalizer, WorldModel
    from dvae.run import load_model

    model, config = load_model(run_dir, device)
    return model, config.normalizer, WorldModel


def _spaces(model, env_id):
    obs_space = spaces.Box(-np.inf, np.inf, (model.config.x_dim,), np.float32)
    if env_id is not None:
        act_space = gym.make(env_id).action_space
    else:
        act_space = spaces.Box(-np.inf, np.inf, (max(model.config.u_dim, 1),), np.float32)
    return obs_space, act_space


def _reward(env_id, reward_fn):
    if reward_fn is not None or env_id is None:
        return reward_fn
    from envs.rewards import REWARDS

    return REWARDS.get(env_id)


class _Imagined:
    """What the single and the vector env share: the world model and seeded sampling."""

    def _setup(self, run_dir, env_id, reward_fn, termination_fn, sample, device, run=None):
        model, norm, world_cls = _load(run_dir, run, device)
        self.world = world_cls(model, norm, sample=sample)
        self.model = model
        self.reward_fn, self.termination_fn = _reward(env_id, reward_fn), termination_fn
        return _spaces(model, env_id)

    def _seeded(self, fn, *args):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.np_random.integers(2 ** 62)))
            return fn(*args)

    def _start(self, n, options):
        history = (options or {}).get("history")
        if history is None:
            return self._seeded(self.world.reset_prior, n)
        x, u = history
        return self._seeded(lambda: self.world.reset(np.asarray(x, np.float32),
                                                     None if u is None else np.asarray(u, np.float32), n))

    def _advance(self, actions):
        """actions (N, u_dim) -> obs (N, x_dim), rewards (N,), terminated (N,)."""
        prev = self.world.x.cpu().numpy()
        a = np.asarray(actions, np.float32).reshape(len(prev), -1)
        u = a if self.model.config.u_dim else None
        obs = self._seeded(self.world.step, None if u is None else torch.from_numpy(u)).cpu().numpy()
        rewards = np.zeros(len(prev)) if self.reward_fn is None else np.asarray(self.reward_fn(prev, a), np.float64)
        term = np.zeros(len(prev), bool) if self.termination_fn is None else \
            np.array([bool(self.termination_fn(o)) for o in obs])
        return obs.astype(np.float32), rewards, term


class WorldModelEnv(_Imagined, gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, run_dir=None, env_id=None, reward_fn=None, termination_fn=None, sample=True, device="cpu",
                 run=None):
        self.observation_space, self.action_space = self._setup(run_dir, env_id, reward_fn, termination_fn,
                                                                sample, device, run)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        obs = self._start(1, options)[0].cpu().numpy().astype(np.float32)
        return obs, {}

    def step(self, action):
        obs, r, term = self._advance(np.asarray(action)[None])
        return obs[0], float(r[0]), bool(term[0]), False, {}


class WorldModelVectorEnv(_Imagined, gym.vector.VectorEnv):
    metadata = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}

    def __init__(self, run_dir=None, num_envs: int = 1, env_id=None, reward_fn=None, termination_fn=None, sample=True,
                 device="cpu", max_episode_steps: int = 200, run=None):
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = self._setup(
            run_dir, env_id, reward_fn, termination_fn, sample, device, run)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.max_episode_steps = max_episode_steps
        self._t = 0

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        self._t = 0
        return self._start(self.num_envs, options).cpu().numpy().astype(np.float32), {}

    def step(self, actions):
        obs, r, term = self._advance(actions)
        self._t += 1
        trunc = np.full(self.num_envs, self._t >= self.max_episode_steps)
        return obs, r, term, trunc, {}
