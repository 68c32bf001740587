"""Exact log-likelihood of a linear-Gaussian state-space model by Kalman filtering (numpy, float64).

    z_0 ~ N(m0, P0);  z_t = A z_{t-1} + B u_{t-1} + w_t, w_t ~ N(0, Q);  x_t = C z_t + v_t, v_t ~ N(0, R)

The oracle against which variational bounds are held (:func:`kalman_log_likelihood`, the project's one
numpy Kalman filter; ``envs.linear_gaussian.log_likelihood`` calls it), and a simulator.
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


def _softplus_inverse(v: np.ndarray) -> np.ndarray:
    return v + np.log(-np.expm1(-v))


def linear_gaussian_dmm(params: LGSSMParams, emission_dim: int = 0, transition_dim: int = 8, rnn_dim: int = 8):
    """A DMM whose generative networks compute the linear-Gaussian system ``params`` exactly, so its
    exact log p(x | u) is :func:`kalman_log_likelihood`: an oracle for its ELBO, IW bounds and
    particle filter (its guide is left at its random initialisation: the bounds hold for any guide).

    Q, R and P0 must be diagonal (the DMM's scales are per dimension). The transition's gate is shut
    (sigmoid(-60) ~ 1e-26, times a proposed mean held at exactly 0), so its mean is the linear part
    A z + B u; its scale sqrt(diag Q) comes from the bias alone. The emitter's ReLU MLP passes
    (relu(z), relu(-z)) through its two hidden layers and its output layer recombines them, C (relu(z)
    - relu(-z)) = C z, exactly. Returns the model (float32, CPU)."""
    import torch

    from dvae.models import ModelConfig, build_model
    from dvae.nn import MIN_SCALE

    A, B, C, Q, R, m0, P0 = (np.asarray(a, dtype=np.float64) for a in params)
    for name, M in (("Q", Q), ("R", R), ("P0", P0)):
        if not np.allclose(M, np.diag(np.diag(M))):
            raise ValueError(f"linear_gaussian_dmm needs a diagonal {name}")
    z_dim, x_dim, u_dim = A.shape[0], C.shape[0], B.shape[1]
    emission_dim = emission_dim or 2 * z_dim
    if emission_dim < 2 * z_dim:
        raise ValueError(f"emission_dim must be at least 2 z_dim = {2 * z_dim}")

    def raw_scale(var):  # positive(raw) = softplus(raw) + MIN_SCALE = sqrt(var)
        return torch.tensor(_softplus_inverse(np.sqrt(np.diag(var)) - MIN_SCALE), dtype=torch.float32)

    def t(a):
        return torch.tensor(a, dtype=torch.float32)

    model = build_model(ModelConfig("dmm", x_dim=x_dim, u_dim=u_dim, z_dim=z_dim, rnn_dim=rnn_dim,
                                    transition_dim=transition_dim, emission_dim=emission_dim))
    with torch.no_grad():
        model.initial.loc.copy_(t(m0))
        model.initial.raw_scale.copy_(raw_scale(P0))
        tr = model.transition
        tr.gate[-1].weight.zero_(), tr.gate[-1].bias.fill_(-60.0)  # gate shut
        tr.proposed_mean[-1].weight.zero_(), tr.proposed_mean[-1].bias.zero_()  # proposed mean 0
        tr.linear_loc.weight.copy_(t(np.concatenate([A, B], 1))), tr.linear_loc.bias.zero_()  # A z + B u
        tr.scale.weight.zero_(), tr.scale.bias.copy_(raw_scale(Q))
        net = model.emitter.net  # Linear, ReLU, Linear, ReLU, Linear
        split = np.zeros((emission_dim, z_dim))
        split[:z_dim], split[z_dim:2 * z_dim] = np.eye(z_dim), -np.eye(z_dim)  # (relu(z), relu(-z))
        net[0].weight.copy_(t(split)), net[0].bias.zero_()
        keep = np.zeros((emission_dim, emission_dim))
        keep[:2 * z_dim, :2 * z_dim] = np.eye(2 * z_dim)
        net[2].weight.copy_(t(keep)), net[2].bias.zero_()
        out = np.zeros((x_dim, emission_dim))
        out[:, :z_dim], out[:, z_dim:2 * z_dim] = C, -C  # C relu(z) - C relu(-z) = C z
        net[4].weight.copy_(t(out)), net[4].bias.zero_()
        model.emitter.raw_scale.copy_(raw_scale(R))
    return model
