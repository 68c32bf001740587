"""A controlled linear-Gaussian state-space model with known parameters and exact likelihood.

    z_0 ~ N(m0, P0)
    z_{t+1} = A z_t + B u_t + w_t,   w_t ~ N(0, Q)
    x_t     = C z_t + v_t,           v_t ~ N(0, R)

The pure, batched dynamics (:func:`initial_state`, :func:`transition`, :func:`observation`,
:func:`reward`) work on numpy arrays with any leading batch shape, in the style of
``gymnasium/envs/phys2d``; :class:`LinearGaussianEnv` steps one system with them, and
:func:`log_likelihood` gives the exact log-density of an observed sequence (by the project's one
Kalman filter, :func:`dvae.eval.exact.kalman_log_likelihood`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

_OMEGA, _DAMP = 0.2, 0.95  # default latent: rotation by 0.2 rad per step, damped by 0.95


def _tuple2(a) -> tuple[tuple[float, ...], ...]:
    a = np.asarray(a, np.float64)
    return tuple(tuple(float(v) for v in row) for row in np.atleast_2d(a))


class LinearGaussianMatrices(NamedTuple):
    """The parameters as float64 arrays: A (z, z), B (z, u), C (x, z), Q (z, z), R (x, x), m0 (z,), P0 (z, z):
    the fields, in the order, of ``dvae.eval.exact.LGSSMParams``, the parameter type of the Kalman
    filter (kept apart so that importing ``envs`` does not import ``dvae``)."""

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    Q: np.ndarray
    R: np.ndarray
    m0: np.ndarray
    P0: np.ndarray


@dataclass(frozen=True)
class LinearGaussianParams:
    """Parameters of the linear-Gaussian system (immutable: matrices are stored as nested tuples).

    Defaults: a 2-D latent that rotates by 0.2 rad per step and decays by 0.95
    (A = 0.95 R(0.2)), a 1-D control pushing the second latent coordinate (B = [0, 0.5]^T),
    a 2-D observation mixing the latents (C = [[1, 0], [0.5, 1]]), process noise Q = 0.01 I,
    observation noise R = 0.04 I, initial state z_0 ~ N(0, I). Controls are clipped to
    [-max_action, max_action] (default 1) before they enter the dynamics.

    Pass any field as an array-like to override it; :meth:`matrices` returns float64 arrays.
    Shapes and positive definiteness of Q, R, P0 are checked on construction.
    """

    A: tuple = _tuple2(_DAMP * np.array([[math.cos(_OMEGA), -math.sin(_OMEGA)],
                                         [math.sin(_OMEGA), math.cos(_OMEGA)]]))
    B: tuple = ((0.0,), (0.5,))
    C: tuple = ((1.0, 0.0), (0.5, 1.0))
    Q: tuple = ((0.01, 0.0), (0.0, 0.01))
    R: tuple = ((0.04, 0.0), (0.0, 0.04))
    m0: tuple = (0.0, 0.0)
    P0: tuple = ((1.0, 0.0), (0.0, 1.0))
    max_action: float = 1.0

    def __post_init__(self):
        for name in ("A", "B", "C", "Q", "R", "P0"):
            object.__setattr__(self, name, _tuple2(getattr(self, name)))
        object.__setattr__(self, "m0", tuple(float(v) for v in np.ravel(np.asarray(self.m0, np.float64))))
        object.__setattr__(self, "max_action", float(self.max_action))
        M = self.matrices()
        A, B, C, Q, R, m0, P0 = M
        z, u, x = A.shape[0], B.shape[1], C.shape[0]
        expected = {"A": (z, z), "B": (z, u), "C": (x, z), "Q": (z, z), "R": (x, x), "m0": (z,), "P0": (z, z)}
        for name, shape in expected.items():
            if getattr(M, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(M, name).shape}, expected {shape} "
                                 f"(z_dim={z}, u_dim={u}, x_dim={x})")
        for name, M in (("Q", Q), ("R", R), ("P0", P0)):
            if not np.allclose(M, M.T):
                raise ValueError(f"{name} must be symmetric")
            try:
                np.linalg.cholesky(M)
            except np.linalg.LinAlgError:
                raise ValueError(f"{name} must be positive definite") from None
        if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B)) and np.all(np.isfinite(C))
                and np.all(np.isfinite(m0))):
            raise ValueError("A, B, C and m0 must be finite")
        if not (self.max_action > 0 and math.isfinite(self.max_action)):
            raise ValueError(f"max_action must be positive and finite, got {self.max_action}")

    def matrices(self) -> LinearGaussianMatrices:
        """The parameters as float64 numpy arrays (fresh copies)."""
        return LinearGaussianMatrices(*(np.array(getattr(self, f), np.float64)
                                        for f in LinearGaussianMatrices._fields))

    @property
    def z_dim(self) -> int:
        return len(self.A)

    @property
    def u_dim(self) -> int:
        return len(self.B[0])

    @property
    def x_dim(self) -> int:
        return len(self.C)


def _noise(rng: np.random.Generator | None, cov: np.ndarray, batch_shape: tuple) -> np.ndarray:
    """N(0, cov) draws of shape batch_shape + (d,): standard normals times chol(cov)^T; zero if rng is None."""
    d = cov.shape[0]
    if rng is None:
        return np.zeros(batch_shape + (d,))
    return rng.standard_normal(batch_shape + (d,)) @ np.linalg.cholesky(cov).T


def initial_state(rng: np.random.Generator | None, params: LinearGaussianParams = LinearGaussianParams(),
                  batch_shape: tuple = ()) -> np.ndarray:
    """z_0 ~ N(m0, P0) with shape batch_shape + (z_dim,), float64 (the mean m0 if rng is None)."""
    M = params.matrices()
    return M.m0 + _noise(rng, M.P0, tuple(batch_shape))


def transition(state: np.ndarray, action: np.ndarray, rng: np.random.Generator | None,
               params: LinearGaussianParams = LinearGaussianParams()) -> np.ndarray:
    """z' = A z + B clip(u) + w, w ~ N(0, Q); state (..., z_dim), action (..., u_dim) -> (..., z_dim).

    The noise is drawn as one ``rng.standard_normal(batch + (z_dim,))`` call, so a batch of
    states gets the same draws as the same states stepped one after the other with one rng.
    ``rng=None`` gives the noise-free mean A z + B clip(u).
    """
    M = params.matrices()
    z = np.asarray(state, np.float64)
    u = np.clip(np.asarray(action, np.float64), -params.max_action, params.max_action)
    mean = z @ M.A.T + u @ M.B.T  # (..., z_dim)
    return mean + _noise(rng, M.Q, mean.shape[:-1])


def observation(state: np.ndarray, rng: np.random.Generator | None,
                params: LinearGaussianParams = LinearGaussianParams()) -> np.ndarray:
    """x = C z + v, v ~ N(0, R); state (..., z_dim) -> (..., x_dim) float64 (C z if rng is None)."""
    M = params.matrices()
    mean = np.asarray(state, np.float64) @ M.C.T  # (..., x_dim)
    return mean + _noise(rng, M.R, mean.shape[:-1])


def reward(state: np.ndarray, action: np.ndarray, next_state: np.ndarray,
           params: LinearGaussianParams = LinearGaussianParams()) -> np.ndarray:
    """-|z|^2 of the latent ``state`` in which the action is taken; (..., z_dim) -> (...)."""
    z = np.asarray(state, np.float64)
    return -np.sum(z * z, axis=-1)


def log_likelihood(obs: np.ndarray, actions: np.ndarray | None,
                   params: LinearGaussianParams = LinearGaussianParams()) -> float:
    """Exact log p(x_0 .. x_{L-1} | u_0 .. u_{L-2}) in nats of an episode of this env (float64).

    ``obs`` (L, x_dim); ``actions`` (L-1, u_dim), u_t taken after x_t (so it moves z_t to
    z_{t+1}), clipped to [-max_action, max_action] as in :func:`transition`; ``None`` means
    zero controls. The Kalman filter is the project's one oracle,
    :func:`dvae.eval.exact.kalman_log_likelihood` (imported on the first call, so that importing
    ``envs`` does not import torch).
    """
    from dvae.eval.exact import kalman_log_likelihood

    x = np.asarray(obs, np.float64)
    if x.ndim != 2 or x.shape[1] != params.x_dim or x.shape[0] < 1:
        raise ValueError(f"obs must have shape (L >= 1, {params.x_dim}), got {x.shape}")
    L = x.shape[0]
    u = None
    if actions is not None:
        u = np.asarray(actions, np.float64)
        if u.shape != (L - 1, params.u_dim):
            raise ValueError(f"actions must have shape ({L - 1}, {params.u_dim}) for {L} observations, "
                             f"got {u.shape}")
        u = np.clip(u, -params.max_action, params.max_action)
    return kalman_log_likelihood(params.matrices(), x, u)


class LinearGaussianEnv(gym.Env):
    """
    ## Description

    A controlled linear-Gaussian state-space model with known parameters: the latent
    z_t follows z_{t+1} = A z_t + B u_t + w_t, w_t ~ N(0, Q), and the agent sees only
    x_t = C z_t + v_t, v_t ~ N(0, R). Because everything is linear and Gaussian the exact
    likelihood of an observed sequence is available (:meth:`log_likelihood`, a Kalman
    filter), which makes this a yardstick for sequence models: their bound on
    -log p(x | u) can be compared with the truth. The default latent is 2-D, rotating by
    0.2 rad and decaying by 0.95 per step (see :class:`LinearGaussianParams`).

    ## Action Space

    ``Box(-max_action, max_action, (u_dim,), float32)``, default ``Box(-1, 1, (1,))``: the
    control u_t. Actions outside the box are clipped before they enter the dynamics.

    ## Observation Space

    ``Box(-inf, inf, (x_dim,), float32)``, default 2-D: the noisy observation x_t = C z_t + v_t.
    The true latent z_t (float64) is in ``info["state"]`` after ``reset`` and every ``step``.

    ## Rewards

    -|z_t|^2, the negative squared norm of the latent in which the action is taken
    (regulate the hidden state to the origin).

    ## Starting State

    z_0 ~ N(m0, P0), default N(0, I); ``reset(options={"state": z})`` starts from a given
    latent instead. The first observation is x_0 = C z_0 + v_0.

    ## Episode End

    The system never terminates. The registered ``dvae/LinearGaussian-v0`` is truncated
    after 200 steps by Gymnasium's TimeLimit.

    ## Arguments

    ``gymnasium.make("dvae/LinearGaussian-v0", **kwargs)`` or ``LinearGaussianEnv(**kwargs)``
    with ``params`` (a :class:`LinearGaussianParams`) and/or any of its fields
    ``A, B, C, Q, R, m0, P0, max_action`` (array-likes) overriding it.
    """

    metadata = {"render_modes": []}

    def __init__(self, params: LinearGaussianParams | None = None, render_mode: str | None = None, **overrides):
        if render_mode is not None:
            raise ValueError(f"LinearGaussianEnv does not render, got render_mode={render_mode!r}")
        base = params if params is not None else LinearGaussianParams()
        self.params = dataclasses.replace(base, **overrides) if overrides else base
        p = self.params
        self.render_mode = None
        self.action_space = spaces.Box(-p.max_action, p.max_action, (p.u_dim,), np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, (p.x_dim,), np.float32)
        self.state: np.ndarray | None = None  # (z_dim,) float64

    def matrices(self) -> LinearGaussianMatrices:
        """(A, B, C, Q, R, m0, P0) as float64 arrays."""
        return self.params.matrices()

    def log_likelihood(self, obs: np.ndarray, actions: np.ndarray | None) -> float:
        """Exact log p(obs | actions) in nats; obs (L, x_dim), actions (L-1, u_dim) or None.

        See :func:`log_likelihood`.
        """
        return log_likelihood(obs, actions, self.params)

    def _obs(self) -> np.ndarray:
        return observation(self.state, self.np_random, self.params).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options is not None and "state" in options:
            z = np.array(options["state"], np.float64)
            if z.shape != (self.params.z_dim,) or not np.all(np.isfinite(z)):
                raise ValueError(f"options['state'] must be finite with shape ({self.params.z_dim},), "
                                 f"got {z.shape}")
            self.state = z
        else:
            self.state = initial_state(self.np_random, self.params)
        return self._obs(), {"state": self.state.copy()}

    def step(self, action):
        if self.state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        u = np.asarray(action, np.float64).reshape(self.params.u_dim)
        r = float(reward(self.state, u, None, self.params))
        self.state = transition(self.state, u, self.np_random, self.params)
        return self._obs(), r, False, False, {"state": self.state.copy()}
