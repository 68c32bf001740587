"""Collect fixed-horizon trajectories from Gymnasium environments into numpy arrays.

Layout returned by :func:`collect` (N episodes, T = ``steps``):

====================  ==========================  ===================================
key                   shape / dtype               meaning
====================  ==========================  ===================================
``obs``               (N, T+1, obs_dim) float32   obs_0 .. obs_T, flattened
``actions``           (N, T, act_dim) float32     Box action spaces
                      (N, T) int64                Discrete action spaces
``rewards``           (N, T) float32
``terminated``        (N, T) bool
``truncated``         (N, T) bool
``lengths``           (N,) int64                  actions actually taken per episode
metadata              0-d arrays                  ``env_id``, ``policy``, ``seed``,
                                                  ``action_space``, ``observation_space``,
                                                  ``discrete_actions``, ``num_actions``
``frame_shape``       (2,) int64                  image observation spaces only (a 2-D
                                                  float Box of [0, 1]): (H, W)
====================  ==========================  ===================================

Entries past ``lengths[i]`` are padding: observations repeat the last real one,
actions, rewards and flags are zero/False.
"""

from __future__ import annotations

import os
import sys
from functools import partial

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from tqdm import tqdm


def _box_bounds(space: spaces.Box) -> tuple[np.ndarray, np.ndarray]:
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ValueError(f"policy needs a bounded Box action space, got {space}")
    return low, high


class RandomPolicy:
    """Uniform random actions drawn from ``rng`` (not the space's own sampler).

    Box: uniform in [low, high] (bounds must be finite), returned with the space's
    shape and dtype. Discrete: uniform integer in [start, start + n).
    """

    def __init__(self, action_space: spaces.Space, rng: np.random.Generator):
        self.space, self.rng = action_space, rng
        if isinstance(action_space, spaces.Box):
            self.low, self.high = _box_bounds(action_space)
        elif not isinstance(action_space, spaces.Discrete):
            raise ValueError(f"unsupported action space {action_space}")

    def reset(self) -> None:
        """No state; present for a uniform policy interface."""

    def __call__(self, obs=None):
        if isinstance(self.space, spaces.Discrete):
            return int(self.space.start + self.rng.integers(self.space.n))
        return self.rng.uniform(self.low, self.high).astype(self.space.dtype)


class OUPolicy:
    """Ornstein–Uhlenbeck exploration for Box actions (temporally smooth noise).

    A unit-scale process x (shape of the action) evolves as
    ``x += theta * (0 - x) * dt + sigma * sqrt(dt) * N(0, 1)`` and the action is
    ``clip(centre + half_width * x, low, high)``, i.e. mean at the box centre and
    noise scaled by half the box width. ``reset()`` sets x back to 0 (the centre).

    For Discrete action spaces there is no notion of smoothness, so this policy
    falls back to uniform random actions (same as :class:`RandomPolicy`).
    """

    def __init__(self, action_space: spaces.Space, rng: np.random.Generator,
                 theta: float = 0.15, sigma: float = 0.3, dt: float = 1.0):
        self.space, self.rng = action_space, rng
        self.theta, self.sigma, self.dt = theta, sigma, dt
        if isinstance(action_space, spaces.Discrete):
            self._fallback = RandomPolicy(action_space, rng)
        elif isinstance(action_space, spaces.Box):
            self._fallback = None
            low, high = _box_bounds(action_space)
            self.low, self.high = low, high
            self.centre, self.half_width = (high + low) / 2, (high - low) / 2
        else:
            raise ValueError(f"unsupported action space {action_space}")
        self.reset()

    def reset(self) -> None:
        """Restart the process at the box centre (call at the start of each episode)."""
        self.x = np.zeros(self.space.shape)

    def __call__(self, obs=None):
        if self._fallback is not None:
            return self._fallback(obs)
        noise = self.rng.standard_normal(self.space.shape)
        self.x = self.x - self.theta * self.x * self.dt + self.sigma * np.sqrt(self.dt) * noise
        action = np.clip(self.centre + self.half_width * self.x, self.low, self.high)
        return action.astype(self.space.dtype)


POLICIES = {"random": RandomPolicy, "ou": OUPolicy}


def collect(env_id: str, episodes: int, steps: int, policy: str = "random",
            seed: int = 0, progress: bool = False, num_envs: int = 1,
            first_episode: int = 0) -> dict[str, np.ndarray]:
    """Roll out ``episodes`` episodes of at most ``steps`` actions from ``gym.make(env_id)``.

    ``num_envs`` copies of the env are stepped together in a
    ``gymnasium.vector.SyncVectorEnv`` (``autoreset_mode=DISABLED``: this function resets
    each finished sub-env itself, with the next episode's seed); a sub-env that finishes
    an episode takes the next episode not yet started, and once none are left it idles
    (its steps are discarded).

    Reproducible under ``seed`` and independent of ``num_envs``: episode i is reset with
    ``seed + i`` and plays the i-th block of ``steps`` actions of an open-loop plan drawn
    before any env step from the policy with Generator ``np.random.default_rng(seed)``
    (``policy.reset()`` before each block; the built-in policies do not look at the
    observation). The action space is seeded with ``seed``. When every episode runs the
    full ``steps`` this is exactly the data of the earlier one-env loop; an episode that
    ends early leaves the rest of its block unused. This holds for any env whose
    randomness comes from ``reset(seed=...)``, as Gymnasium requires. ``policy`` is
    ``"random"`` or ``"ou"`` (``"ou"`` is random for Discrete actions). Observations are
    flattened with ``gymnasium.spaces.flatten``.

    An episode stops when the env terminates or truncates (e.g. its own TimeLimit);
    the flag is set at its last real step. Reaching ``steps`` also sets
    ``truncated=True`` at the last step (as Gymnasium's TimeLimit does, even if the
    env terminated on that step).

    Returns a dict of numpy arrays (N = episodes, T = steps): ``obs`` (N, T+1, obs_dim)
    float32, ``actions`` (N, T, act_dim) float32 for Box or (N, T) int64 for Discrete,
    ``rewards`` (N, T) float32, ``terminated`` / ``truncated`` (N, T) bool,
    ``lengths`` (N,) int64, plus 0-d metadata arrays ``env_id``, ``policy``, ``seed``,
    ``action_space``, ``observation_space`` (str), ``discrete_actions`` (bool),
    ``num_actions`` (int; -1 unless Discrete), and for Box actions ``action_low`` /
    ``action_high`` (act_dim,) float32, the bounds loaders check actions against. Padding past ``lengths`` repeats the
    last observation; actions and rewards are zero.

    Raises ValueError for an unknown env id, an unknown policy, non-positive
    ``episodes``/``steps``/``num_envs``, or an action space that is neither Box nor Discrete.

    ``first_episode`` = F collects episodes F .. F + episodes - 1 of the run under ``seed`` (their
    resets and plan blocks; the blocks before are drawn and discarded): collecting a run in parts
    (``dvae collect --shards K``) gives exactly the episodes of collecting it at once.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {sorted(POLICIES)}")
    if episodes < 1 or steps < 1:
        raise ValueError(f"episodes and steps must be >= 1, got {episodes} and {steps}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if first_episode < 0:
        raise ValueError(f"first_episode must be >= 0, got {first_episode}")
    N, T = episodes, steps
    K = min(num_envs, N)  # more sub-envs than episodes would only idle
    try:
        env0 = gym.make(env_id)
    except (gym.error.UnregisteredEnv, gym.error.DeprecatedEnv):
        raise ValueError(f"unknown Gymnasium env id {env_id!r}") from None
    vec = None
    try:
        act_space, obs_space = env0.action_space, env0.observation_space
        discrete = isinstance(act_space, spaces.Discrete)
        if not (discrete or isinstance(act_space, spaces.Box)):
            raise ValueError(f"unsupported action space {act_space} (need Box or Discrete)")
        act_space.seed(seed)
        pol = POLICIES[policy](act_space, np.random.default_rng(seed))

        # The open-loop plan: block i (T actions) for episode i, drawn episode by episode.
        for _ in range(first_episode):  # the blocks of the episodes before this part
            pol.reset()
            for t in range(T):
                pol(None)
        plan = np.zeros((N, T) + act_space.shape, act_space.dtype)  # (N, T[, *act_shape])
        for i in range(N):
            pol.reset()
            for t in range(T):
                plan[i, t] = pol(None)

        obs_dim = spaces.flatdim(obs_space)
        obs = np.zeros((N, T + 1, obs_dim), np.float32)  # (N, T+1, obs_dim)
        if discrete:
            actions = np.zeros((N, T), np.int64)  # (N, T)
        else:
            actions = np.zeros((N, T, int(np.prod(act_space.shape))), np.float32)  # (N, T, act_dim)
        rewards = np.zeros((N, T), np.float32)  # (N, T)
        terminated = np.zeros((N, T), bool)  # (N, T)
        truncated = np.zeros((N, T), bool)  # (N, T)
        lengths = np.zeros(N, np.int64)  # (N,)

        vec = gym.vector.SyncVectorEnv([lambda: env0] + [partial(gym.make, env_id)] * (K - 1),
                                       autoreset_mode=gym.vector.AutoresetMode.DISABLED)

        def flat(o_batch):  # batched observation -> (K, obs_dim)
            return np.stack([spaces.flatten(obs_space, o)
                             for o in gym.vector.utils.iterate(vec.observation_space, o_batch)])

        episode = np.arange(K)  # (K,) the episode each sub-env plays; -1 once it idles
        t = np.zeros(K, np.int64)  # (K,) actions taken in that episode so far
        o, _ = vec.reset(seed=[seed + first_episode + i for i in range(K)])
        obs[episode, 0] = flat(o)
        next_episode = K
        bar = tqdm(total=N, desc=env_id, unit="ep", file=sys.stderr, disable=not progress)
        while (episode >= 0).any():
            live = episode >= 0  # (K,)
            ep, tk = episode[live], t[live]  # (K_live,)
            a = np.broadcast_to(plan[0, 0], (K,) + act_space.shape).copy()  # idle: any valid action
            a[live] = plan[ep, tk]
            o, r, term, trunc, _ = vec.step(a)
            ended = term | trunc  # (K,)
            obs[ep, tk + 1] = flat(o)[live]
            actions[ep, tk] = plan[ep, tk].reshape(actions[ep, tk].shape)
            rewards[ep, tk] = r[live]
            terminated[ep, tk] = term[live]
            truncated[ep, tk] = trunc[live] | (tk == T - 1)
            t[live] += 1
            # DISABLED autoreset: every sub-env whose episode ended (or idles after an end)
            # is reset here, live ones with their next episode's seed.
            reset_mask = ended | (live & (t == T))  # (K,)
            seeds: list[int | None] = [None] * K
            for k in np.flatnonzero(reset_mask & live):
                i, L = episode[k], t[k]
                lengths[i] = L
                obs[i, L + 1:] = obs[i, L]  # pad with the last real observation
                bar.update(1)
                episode[k], t[k] = (next_episode, 0) if next_episode < N else (-1, 0)
                next_episode += 1
                seeds[k] = seed + first_episode + int(episode[k]) if episode[k] >= 0 else None
            if reset_mask.any() and (episode >= 0).any():
                o, _ = vec.reset(seed=seeds, options={"reset_mask": reset_mask})
                fresh = reset_mask & (episode >= 0)
                obs[episode[fresh], 0] = flat(o)[fresh]
        bar.close()
    finally:
        if vec is not None:
            vec.close()  # closes env0 too
        else:
            env0.close()

    return {
        "obs": obs, "actions": actions, "rewards": rewards,
        "terminated": terminated, "truncated": truncated, "lengths": lengths,
        "env_id": np.array(env_id), "policy": np.array(policy),
        "seed": np.array(seed, np.int64),
        "action_space": np.array(str(act_space)),
        "observation_space": np.array(str(obs_space)),
        **({"frame_shape": np.array(obs_space.shape, np.int64)} if _is_frame_space(obs_space) else {}),
        "discrete_actions": np.array(discrete),
        "num_actions": np.array(int(act_space.n) if discrete else -1, np.int64),
        **({} if discrete else {"action_low": np.ravel(act_space.low).astype(np.float32),  # (act_dim,)
                                "action_high": np.ravel(act_space.high).astype(np.float32)}),
    }


def _is_frame_space(space) -> bool:
    """A grayscale image space: a 2-D float Box of intensities in [0, 1]."""
    if not isinstance(space, spaces.Box) or len(space.shape) != 2 or not np.issubdtype(space.dtype, np.floating):
        return False
    return bool(np.all(space.low == 0) and np.all(space.high == 1))


def save_npz(path: str | os.PathLike, data: dict, replace: bool = True) -> None:
    """Write ``data`` to ``path`` with ``np.savez`` (path used verbatim), through the project's one
    atomic writer :func:`dvae.files.atomic_write` (parent directories created; never through a symlink
    at ``path``). ``replace=False``: refuse (FileExistsError) when ``path`` exists."""
    from dvae.files import atomic_write

    atomic_write(path, lambda f: np.savez(f, **data), replace=replace)
