"""Exact log-likelihood of a linear-Gaussian state-space model by Kalman filtering (numpy, float64).

    z_0 ~ N(m0, P0);  z_t = A z_{t-1} + B u_{t-1} + w_t, w_t ~ N(0, Q);  x_t = C z_t + v_t, v_t ~ N(0, R)

The oracle against which variational bounds are held.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np


class LGSSMParams(NamedTuple):
    A: np.ndarray   # (z_dim, z_dim)
    B: np.ndarray   # (z_dim, u_dim)
    C: np.ndarray   # (x_dim, z_dim)
    Q: np.ndarray   # (z_dim, z_dim)
    R: np.ndarray   # (x_dim, x_dim)
    m0: np.ndarray  # (z_dim,)
    P0: np.ndarray  # (z_dim, z_dim)


def _gauss_logpdf(r, S):
    _, logdet = np.linalg.slogdet(S)
    return -0.5 * (r @ np.linalg.solve(S, r) + logdet + len(r) * np.log(2 * np.pi))


def kalman_log_likelihood(params: LGSSMParams, x: np.ndarray, u: Optional[np.ndarray] = None) -> float:
    """log p(x_0 .. x_{L-1} | u) of one sequence: x (L, x_dim), u (L, u_dim) with u[t] driving z_{t+1}."""
    A, B, C, Q, R, m, P = (np.asarray(a, dtype=np.float64) for a in params)
    total = 0.0
    for t in range(len(x)):
        if t > 0:
            m = A @ m + (B @ u[t - 1] if u is not None else 0.0)
            P = A @ P @ A.T + Q
        S = C @ P @ C.T + R  # (x_dim, x_dim) innovation covariance
        r = x[t] - C @ m
        total += _gauss_logpdf(r, S)
        K = P @ C.T @ np.linalg.inv(S)
        m = m + K @ r
        P = (np.eye(len(m)) - K @ C) @ P
    return float(total)


def sample_lgssm(params: LGSSMParams, num_sequences: int, num_steps: int, rng: np.random.Generator,
                 u_scale: float = 1.0):
    """Simulate: returns xs (N, L, x_dim), us (N, L, u_dim) (the last control unused), zs (N, L, z_dim)."""
    A, B, C, Q, R, m0, P0 = (np.asarray(a, dtype=np.float64) for a in params)
    z_dim, x_dim, u_dim = A.shape[0], C.shape[0], B.shape[1]
    us = u_scale * rng.standard_normal((num_sequences, num_steps, u_dim))  # (N, L, u_dim)
    zs = np.zeros((num_sequences, num_steps, z_dim))
    z = rng.multivariate_normal(m0, P0, size=num_sequences)  # (N, z_dim)
    for t in range(num_steps):
        if t > 0:
            z = z @ A.T + us[:, t - 1] @ B.T + rng.multivariate_normal(np.zeros(z_dim), Q, size=num_sequences)
        zs[:, t] = z
    xs = zs @ C.T + rng.multivariate_normal(np.zeros(x_dim), R, size=(num_sequences, num_steps))  # (N, L, x_dim)
    return xs, us, zs
