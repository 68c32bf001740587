"""A trained `dvae` model as a Gymnasium environment (``dvae/WorldModel-v0``).

Description:
    Imagined dynamics: observations come from a trained model's predictive distribution under the
    actions taken. Built from a run directory (``run_dir``) written by ``dvae train``, through the
    public ``dvae.run.load_model`` and ``dvae.world_model.WorldModel``, or from an in-memory
    ``dvae.Run`` (``run``) or model (``model``, ``normalizer``).

Action Space:
    The real env's action space when ``env_id`` is given (e.g. Pendulum-v1's Box(-2, 2, (1,))),
    else an unbounded Box of the model's control dimension. An ``env_id`` whose spaces the run's model
    cannot stand in for (observation size, number of controls, discrete or continuous) is refused
    (``dvae.world_model.spaces_problem``). Actions outside a Box are clipped to it, as the real
    dynamics clip them; a Discrete action reaches the model one-hot, as it was trained; None, NaN,
    non-numbers and wrong shapes are refused with a ValueError (nothing is reshaped).

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
    run_dir, or ``run=`` a ``dvae.Run`` in memory (``run.env(env_id)`` makes one), or ``model=`` a model in
    memory (any family that states the state-space contract) with ``normalizer=`` its data's
    :class:`dvae.data.Normalizer`; env_id=None, reward_fn=None, termination_fn=None, sample=True (sampled
    observations; False: the emitter means), device="cpu".

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


def _device(device):
    """``device`` as a torch.device, refusing an unknown name, or CUDA where there is none, in one line
    (instead of a checkpoint that 'cannot be loaded')."""
    if device == "auto":
        from dvae.device import resolve_device

        return resolve_device("auto")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r}: not a device (use 'cpu', 'cuda' or 'auto')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available")
    return dev


def _real(name, value, ndim):
    """``value`` as a float32 array of ``ndim`` dims: real numbers only (no complex, strings, objects),
    finite after the cast (a float64 beyond float32's range is refused, not made inf)."""
    try:
        a = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: not an array of numbers ({e})") from None
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real numbers, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = a.astype(np.float32)
    if not np.all(np.isfinite(out)):
        bad = np.argwhere(~np.isfinite(out))[0]
        raise ValueError(f"{name} has {a[tuple(bad)]!r} at index {tuple(int(i) for i in bad)}: expected finite "
                         "numbers within float32's range")
    return out


def _history(options):
    """(x (C, x_dim), u (C - 1, u_dim) or None) from ``reset``'s options, or None for a start from the prior."""
    if options is None:
        return None
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict (e.g. {{'history': (x, u)}}), got {type(options).__name__}")
    history = options.get("history")
    if history is None:
        return None
    if not isinstance(history, (tuple, list)) or len(history) != 2:
        raise ValueError("options['history'] must be a pair (x (C, x_dim), u (C - 1, u_dim) or None), got "
                         f"{type(history).__name__}" + (f" of length {len(history)}" if isinstance(history, (tuple, list)) else ""))
    x, u = history
    return _real("history x", x, 2), None if u is None else _real("history u", u, 2)


def _load(run_dir, device):
    from dvae.run import load_model
    from dvae.world_model import WorldModel

    model, config = load_model(run_dir, device)
    return model, config.normalizer, WorldModel


def _spaces(model, env_id):
    """The imagined env's spaces: the real env's action space when ``env_id`` is given (after checking
    that the model can stand in for that env), else an unbounded Box of the model's controls."""
    obs_space = spaces.Box(-np.inf, np.inf, (model.config.x_dim,), np.float32)
    if env_id is not None:
        from dvae.world_model import spaces_problem

        real = gym.make(env_id)
        problem = spaces_problem(model, real.observation_space, real.action_space, env_id)
        real.close()
        if problem:
            raise ValueError(problem)
        act_space = real.action_space
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

    def _setup(self, run_dir, env_id, reward_fn, termination_fn, sample, device, model=None, normalizer=None,
               run=None):
        if run is not None:  # a dvae.Run in memory: its model and normaliser
            if run_dir is not None or model is not None or normalizer is not None:
                raise ValueError("give one of run_dir, run= (a dvae.Run), or model= with normalizer=")
            if not (hasattr(run, "model") and hasattr(run, "normalizer")):
                raise ValueError(f"run must be a dvae.Run (with model and normalizer), got {type(run).__name__}")
            model, normalizer = run.model, run.normalizer
        if model is not None:  # a model in memory (any family that states the contract) and its normaliser
            if run_dir is not None or normalizer is None:
                raise ValueError("give either run_dir, or model= with normalizer= (the data's units)")
            from dvae.world_model import WorldModel

            model, norm, world_cls = model.to(_device(device)), normalizer, WorldModel
        elif run_dir is None:
            raise ValueError("dvae/WorldModel-v0 needs run_dir= (a run directory) or model= and normalizer=")
        else:
            model, norm, world_cls = _load(run_dir, _device(device))
        if not isinstance(sample, (bool, np.bool_)):
            raise ValueError(f"sample must be True or False, got {sample!r}")
        self.world = world_cls(model, norm, sample=bool(sample))
        self.model = model
        self.reward_fn, self.termination_fn = _reward(env_id, reward_fn), termination_fn
        obs_space, self._action_space_1 = _spaces(model, env_id)
        return obs_space, self._action_space_1

    def _seeded(self, fn, *args):
        """``fn(*args)`` under a torch seed drawn from ``self.np_random``; every random stream the seed
        touches is put back afterwards (the CPU's and, where CUDA is in use, each CUDA device's), so
        the caller's own draws go on as if the env had drawn nothing. Without CUDA in use only the CPU
        generator is seeded (``torch.manual_seed`` would queue a seed for CUDA's later start)."""
        seed = int(self.np_random.integers(2 ** 62))
        cuda = torch.cuda.is_initialized()
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
            if cuda:
                torch.manual_seed(seed)  # the CPU and every CUDA device, all forked above
            else:
                torch.default_generator.manual_seed(seed)
            return fn(*args)

    def _start(self, n, options):
        history = _history(options)
        if history is None:
            return self._seeded(self.world.reset_prior, n)
        x, u = history
        return self._seeded(lambda: self.world.reset(x, u, n))

    def _advance(self, actions):
        """actions (N,) + the action space's shape -> obs (N, x_dim), rewards (N,), terminated (N,)."""
        from dvae.world_model import encode_actions

        if self.world.x is None:
            raise RuntimeError("call reset() before step()")
        prev = self.world.x.cpu().numpy()
        a = encode_actions(self._action_space_1, actions, len(prev))  # (N, u_dim): one-hot or clipped
        u = a if self.model.config.u_dim else None
        obs = self._seeded(self.world.step, None if u is None else torch.from_numpy(u)).cpu().numpy()
        taken = np.asarray(actions) if type(self._action_space_1).__name__ == "Discrete" else a
        rewards = np.zeros(len(prev)) if self.reward_fn is None else self._rewards(prev, taken)
        term = np.zeros(len(prev), bool) if self.termination_fn is None else \
            np.array([self._terminated(o) for o in obs])
        return obs.astype(np.float32), rewards, term

    def _rewards(self, prev, taken):
        """reward_fn's rewards, (N,) float64 (a scalar for one rollout is taken as it)."""
        n = len(prev)
        try:
            r = np.asarray(self.reward_fn(prev, taken), np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"reward_fn must return numbers, one per rollout: {e}") from None
        if r.ndim == 0 and n == 1:
            r = r[None]
        if r.shape != (n,):
            raise ValueError(f"reward_fn returned shape {r.shape}, expected ({n},): one reward per rollout")
        return r

    def _terminated(self, obs) -> bool:
        t = self.termination_fn(obs)
        if np.ndim(t) != 0:
            raise ValueError(f"termination_fn must return one bool per observation, got shape {np.shape(t)}")
        return bool(t)


class WorldModelEnv(_Imagined, gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, run_dir=None, env_id=None, reward_fn=None, termination_fn=None, sample=True, device="cpu",
                 model=None, normalizer=None, run=None):
        self.observation_space, self.action_space = self._setup(run_dir, env_id, reward_fn, termination_fn,
                                                                sample, device, model, normalizer, run)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        obs = self._start(1, options)[0].cpu().numpy().astype(np.float32)
        return obs, {}

    def step(self, action):
        if action is None:
            raise ValueError("an action is required (got None)")
        obs, r, term = self._advance(np.asarray(action)[None])
        return obs[0], float(r[0]), bool(term[0]), False, {}


class WorldModelVectorEnv(_Imagined, gym.vector.VectorEnv):
    metadata = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}

    def __init__(self, run_dir=None, num_envs: int = 1, env_id=None, reward_fn=None, termination_fn=None, sample=True,
                 device="cpu", max_episode_steps: int = 200, model=None, normalizer=None, run=None):
        if isinstance(num_envs, (bool, np.bool_)) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if isinstance(max_episode_steps, (bool, np.bool_)) or not isinstance(max_episode_steps, (int, np.integer)) \
                or max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be an integer >= 1, got {max_episode_steps!r}")
        self.num_envs = int(num_envs)
        self.single_observation_space, self.single_action_space = self._setup(
            run_dir, env_id, reward_fn, termination_fn, sample, device, model, normalizer, run)
        from dvae.inputs import check_bytes  # the rollouts' states, before any is drawn

        m = self.model.config
        width = sum(int(getattr(m, k, 0) or 0) for k in ("x_dim", "u_dim", "z_dim", "z_dim", "rnn_dim",
                                                         "transition_dim", "emission_dim"))
        check_bytes(4 * self.num_envs * width, f"{self.num_envs} rollouts of {width} floats each", "num_envs")
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
