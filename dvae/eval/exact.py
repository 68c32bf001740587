"""Exact log-likelihood of a linear-Gaussian state-space model by Kalman filtering (numpy, float64).

    z_0 ~ N(m0, P0);  z_t = A z_{t-1} + B u_{t-1} + w_t, w_t ~ N(0, Q);  x_t = C z_t + v_t, v_t ~ N(0, R)

The oracle against which variational bounds are held (:func:`kalman_log_likelihood`, the project's one
numpy Kalman filter; ``envs.linear_gaussian.log_likelihood`` calls it), and a simulator. A DMM that
computes such a system exactly, whose bounds this oracle holds, is ``dvae.models.dmm.linear_gaussian_dmm``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np


class LGSSMParams(NamedTuple):
    """The parameters of the system, the one parameter type of :func:`kalman_log_likelihood`. Any tuple
    of the seven arrays in this order is accepted (``envs.linear_gaussian.LinearGaussianMatrices``,
    ``LinearGaussianParams.matrices()``, ``LGSSM.params()`` converted to numpy)."""

    A: np.ndarray   # (z_dim, z_dim)
    B: np.ndarray   # (z_dim, u_dim)
    C: np.ndarray   # (x_dim, z_dim)
    Q: np.ndarray   # (z_dim, z_dim)
    R: np.ndarray   # (x_dim, x_dim)
    m0: np.ndarray  # (z_dim,)
    P0: np.ndarray  # (z_dim, z_dim)


def kalman_log_likelihood(params: LGSSMParams, x: np.ndarray, u: Optional[np.ndarray] = None) -> float:
    """Exact log p(x_0 .. x_{L-1} | u) in nats of one sequence, by the Kalman filter (float64): the
    oracle of the project, for evaluation (``dvae.eval``, the tests) and the linear-Gaussian env
    (``envs.linear_gaussian.log_likelihood``, which clips actions as its dynamics do, then calls this).

    ``params``: (A, B, C, Q, R, m0, P0) (:class:`LGSSMParams`). ``x`` (L >= 1, x_dim). ``u``: the
    controls, u[t] driving z_t to z_{t+1}: (L - 1, u_dim), or (L, u_dim) whose last row is unused (a
    padded batch's layout); None means no controls (B is not used). The prediction-error decomposition
    sum_t log N(x_t; C m_t, C P_t C^T + R) with the filter's predicted moments (m_t, P_t), through the
    Cholesky factor of each innovation covariance, covariance updates in Joseph form."""
    A, B, C, Q, R, m, P = (np.asarray(a, dtype=np.float64) for a in params)
    z_dim, x_dim = A.shape[0], C.shape[0]
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != x_dim or len(x) < 1:
        raise ValueError(f"x must have shape (L >= 1, {x_dim}), got {x.shape}")
    L = len(x)
    if u is not None:
        u = np.asarray(u, dtype=np.float64)
        if u.ndim != 2 or u.shape[1] != B.shape[1] or len(u) not in (L - 1, L):
            raise ValueError(f"u must have shape ({L - 1} or {L}, {B.shape[1]}) for {L} observations, got {u.shape}")
    if not (np.all(np.isfinite(x)) and (u is None or np.all(np.isfinite(u)))):
        raise ValueError("x and u must be finite")
    eye = np.eye(z_dim)
    total = 0.0
    for t in range(L):
        if t > 0:
            m = A @ m + (B @ u[t - 1] if u is not None else 0.0)
            P = A @ P @ A.T + Q
            P = (P + P.T) / 2
        S = C @ P @ C.T + R  # (x_dim, x_dim) innovation covariance
        cs = np.linalg.cholesky((S + S.T) / 2)
        e = x[t] - C @ m  # (x_dim,) innovation
        alpha = np.linalg.solve(cs, e)
        total += -0.5 * (alpha @ alpha) - np.sum(np.log(np.diag(cs))) - 0.5 * x_dim * np.log(2 * np.pi)
        K = np.linalg.solve(cs.T, np.linalg.solve(cs, C @ P)).T  # (z_dim, x_dim) = P C^T S^-1
        m = m + K @ e
        IKC = eye - K @ C
        P = IKC @ P @ IKC.T + K @ R @ K.T
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
