"""Pendulum-v1 seen through small grayscale frames: the angle and velocity are hidden.

The physics are those of ``gymnasium/envs/classic_control/pendulum.py`` (g = 10, m = 1,
l = 1, dt = 0.05, |theta_dot| <= 8, |u| <= 2, semi-implicit Euler), written here as pure,
batched numpy functions (:func:`initial_state`, :func:`transition`, :func:`reward`,
:func:`render_frames`) in the style of ``gymnasium/envs/phys2d``. Frames are rasterised
with numpy (no pygame).

Image convention (the same picture as Pendulum-v1's own renderer): the pivot is at the
centre of the frame, theta = 0 points straight up and theta grows counterclockwise, so the
rod's tip lies at (column, row) = centre + r * (-sin theta, -cos theta), rows counted
downward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces


@dataclass(frozen=True)
class PixelPendulumParams:
    """Pendulum-v1's physical constants plus the rendering.

    ``size``: frame side in pixels; ``view``: half the side of the square of the plane shown
    (world units; the rod has length ``l``); ``rod_width``: rod thickness in world units.
    ``high_theta``, ``high_theta_dot``: the initial state is uniform in
    [-high_theta, high_theta] x [-high_theta_dot, high_theta_dot] (Pendulum-v1's pi and 1).
    """

    max_speed: float = 8.0
    max_torque: float = 2.0
    dt: float = 0.05
    g: float = 10.0
    m: float = 1.0
    l: float = 1.0
    high_theta: float = math.pi
    high_theta_dot: float = 1.0
    size: int = 32
    view: float = 1.2
    rod_width: float = 0.25

    def __post_init__(self):
        if not (isinstance(self.size, (int, np.integer)) and self.size >= 4):
            raise ValueError(f"size must be an integer >= 4, got {self.size!r}")
        for name in ("max_speed", "max_torque", "dt", "m", "l", "view", "rod_width"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be positive and finite, got {v!r}")


def angle_normalize(x: np.ndarray) -> np.ndarray:
    """Angle wrapped to [-pi, pi) (as Pendulum-v1)."""
    return ((x + np.pi) % (2 * np.pi)) - np.pi


def initial_state(rng: np.random.Generator, params: PixelPendulumParams = PixelPendulumParams(),
                  batch_shape: tuple = ()) -> np.ndarray:
    """(theta, theta_dot) uniform in [-high, high], shape batch_shape + (2,), float64.

    For ``batch_shape=()`` this is exactly Pendulum-v1's ``np_random.uniform(-high, high)``.
    """
    high = np.array([params.high_theta, params.high_theta_dot])
    return rng.uniform(low=-high, high=high, size=tuple(batch_shape) + (2,))


def transition(state: np.ndarray, action: np.ndarray, rng: np.random.Generator | None = None,
               params: PixelPendulumParams = PixelPendulumParams()) -> np.ndarray:
    """Pendulum-v1's step: state (..., 2) = (theta, theta_dot), action (..., 1) -> (..., 2).

    Deterministic (``rng`` is unused, present for the common signature)::

        u = clip(u, -max_torque, max_torque)
        theta_dot' = clip(theta_dot + (3 g / (2 l) sin theta + 3 / (m l^2) u) dt, -max_speed, max_speed)
        theta' = theta + theta_dot' dt
    """
    s = np.asarray(state, np.float64)
    th, thdot = s[..., 0], s[..., 1]
    u = np.clip(np.asarray(action, np.float64), -params.max_torque, params.max_torque)[..., 0]
    g, m, l, dt = params.g, params.m, params.l, params.dt
    newthdot = thdot + (3 * g / (2 * l) * np.sin(th) + 3.0 / (m * l**2) * u) * dt
    newthdot = np.clip(newthdot, -params.max_speed, params.max_speed)
    newth = th + newthdot * dt
    return np.stack([newth, newthdot], axis=-1)


def reward(state: np.ndarray, action: np.ndarray, next_state: np.ndarray | None = None,
           params: PixelPendulumParams = PixelPendulumParams()) -> np.ndarray:
    """Pendulum-v1's reward -(normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2) of the state acted in; (...)."""
    s = np.asarray(state, np.float64)
    u = np.clip(np.asarray(action, np.float64), -params.max_torque, params.max_torque)[..., 0]
    return -(angle_normalize(s[..., 0]) ** 2 + 0.1 * s[..., 1] ** 2 + 0.001 * u**2)


def render_frames(theta: np.ndarray, params: PixelPendulumParams = PixelPendulumParams()) -> np.ndarray:
    """Grayscale frames of the rod at angles ``theta`` (...,) -> (..., size, size) float32 in [0, 1].

    A pixel's value is its centre's distance d to the segment from the pivot to the tip,
    mapped to 1 inside the rod (d <= rod_width / 2), 0 beyond one pixel more, linear in
    between (a one-pixel anti-aliased edge); the rod has round ends.
    """
    th = np.asarray(theta, np.float64)[..., None, None]  # (..., 1, 1)
    n, view = params.size, params.view
    pix = 2 * view / n  # world units per pixel
    c = (np.arange(n) + 0.5) * pix - view  # pixel centres, world units, left->right / top->bottom
    px, py = c[None, :], -c[:, None]  # (1, n) x, (n, 1) y (y up)
    dx, dy = -np.sin(th), np.cos(th)  # rod direction (y up)
    proj = np.clip(px * dx + py * dy, 0.0, params.l)  # (..., n, n) position along the rod
    d = np.hypot(px - proj * dx, py - proj * dy)  # distance to the segment
    return np.clip((params.rod_width / 2 + pix - d) / pix, 0.0, 1.0).astype(np.float32)


class PixelPendulumEnv(gym.Env):
    """
    ## Description

    Gymnasium's Pendulum-v1 (the inverted pendulum swing-up) observed only through
    small grayscale images of the rod: the true angle and angular velocity are hidden and
    must be inferred from the frames, the velocity from at least two of them. The physics
    are Pendulum-v1's exactly (:func:`transition`); the image is drawn with numpy.

    ## Action Space

    ``Box(-2, 2, (1,), float32)``: the torque applied at the free end of the pendulum
    (clipped to [-max_torque, max_torque]).

    ## Observation Space

    ``Box(0, 1, (size, size), float32)``, default 32 x 32: a grayscale frame, 1 on the rod,
    0 on the background, with a one-pixel anti-aliased edge. The pivot is at the centre of
    the frame, theta = 0 points up, theta grows counterclockwise: the tip is at
    (column, row) = centre + l / pixel_size * (-sin theta, -cos theta), rows counted
    downward. The frame shows the square [-view, view]^2 of the plane (default view = 1.2,
    rod length 1). ``info["theta"]`` (not wrapped) and ``info["theta_dot"]`` hold the true
    state after ``reset`` and every ``step``.

    ## Rewards

    As Pendulum-v1: -(normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2) of the state in
    which the torque u is applied, in [-16.27, 0].

    ## Starting State

    theta uniform in [-pi, pi], theta_dot uniform in [-1, 1] (``high_theta``,
    ``high_theta_dot``); ``reset(options={"state": (theta, theta_dot)})`` starts from a
    given state instead.

    ## Episode End

    Never terminates. The registered ``dvae/PixelPendulum-v0`` is truncated after 200
    steps by Gymnasium's TimeLimit (as Pendulum-v1).

    ## Arguments

    ``gymnasium.make("dvae/PixelPendulum-v0", **kwargs)`` or ``PixelPendulumEnv(**kwargs)``
    with ``params`` (a :class:`PixelPendulumParams`) and/or any of its fields overriding it
    (``size``, ``view``, ``rod_width``, ``g``, ``max_torque``, ...), and ``render_mode``
    ``None`` or ``"rgb_array"`` (the frame as a (size, size, 3) uint8 image).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, params: PixelPendulumParams | None = None, render_mode: str | None = None, **overrides):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        base = params if params is not None else PixelPendulumParams()
        self.params = PixelPendulumParams(**{**base.__dict__, **overrides}) if overrides else base
        p = self.params
        self.render_mode = render_mode
        self.action_space = spaces.Box(-p.max_torque, p.max_torque, (1,), np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, (p.size, p.size), np.float32)
        self.state: np.ndarray | None = None  # (2,) float64: theta, theta_dot

    def _info(self) -> dict:
        return {"theta": float(self.state[0]), "theta_dot": float(self.state[1])}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options is not None and "state" in options:
            s = np.array(options["state"], np.float64)
            if s.shape != (2,) or not np.all(np.isfinite(s)):
                raise ValueError(f"options['state'] must be finite (theta, theta_dot), got {options['state']!r}")
            self.state = s
        else:
            self.state = initial_state(self.np_random, self.params)
        return render_frames(self.state[0], self.params), self._info()

    def step(self, action):
        if self.state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        u = np.asarray(action, np.float64).reshape(1)
        r = float(reward(self.state, u, None, self.params))
        self.state = transition(self.state, u, None, self.params)
        return render_frames(self.state[0], self.params), r, False, False, self._info()

    def render(self):
        if self.render_mode != "rgb_array" or self.state is None:
            return None
        frame = np.round(render_frames(self.state[0], self.params) * 255).astype(np.uint8)
        return np.repeat(frame[:, :, None], 3, axis=2)
