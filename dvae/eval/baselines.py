"""Simple forecasting baselines and k-step error utilities (numpy only).

Conventions: batch first; x_t observed at t = 0..L-1; control u_t is applied
after x_t is observed and drives x_{t+1}; ``us`` may be None (uncontrolled).
"""
from __future__ import annotations

import numpy as np


def persistence_forecast(x_context: np.ndarray, horizon: int) -> np.ndarray:
    """Repeat the last context observation.

    x_context: (B, C, x_dim) -> returns (B, H, x_dim) with H = horizon.
    """
    x_context = np.asarray(x_context)
    last = x_context[:, -1:, :]  # (B, 1, x_dim)
    return np.repeat(last, horizon, axis=1)  # (B, H, x_dim)


class LinearARX:
    """Least-squares linear model x_{t+1} = A x_t + B u_t + c (B is None without controls).

    Attributes after ``fit``: A (x_dim, x_dim), B (x_dim, u_dim) or None, c (x_dim,).
    """

    def __init__(self):
        self.A = None
        self.B = None
        self.c = None

    def fit(self, xs: list, us: list | None = None, ridge: float = 1e-6) -> "LinearARX":
        """Fit on every transition t -> t+1 of each sequence.

        xs: list of (L_i, x_dim); us: list of (L_i, u_dim) or None (u_t of the same index is used).
        ridge: Tikhonov term added to the normal equations (not applied to the bias).
        """
        feats, targets = [], []
        for i, x in enumerate(xs):
            x = np.asarray(x, dtype=np.float64)
            if len(x) < 2:
                continue
            parts = [x[:-1]]  # (L_i-1, x_dim)
            if us is not None:
                parts.append(np.asarray(us[i], dtype=np.float64)[: len(x) - 1])  # (L_i-1, u_dim)
            parts.append(np.ones((len(x) - 1, 1)))  # (L_i-1, 1)
            feats.append(np.concatenate(parts, axis=1))  # (L_i-1, F)
            targets.append(x[1:])  # (L_i-1, x_dim)
        if not feats:
            raise ValueError("LinearARX.fit: no sequence has at least 2 steps")
        Z = np.concatenate(feats)  # (N, F)
        Y = np.concatenate(targets)  # (N, x_dim)
        reg = ridge * np.eye(Z.shape[1])  # (F, F)
        reg[-1, -1] = 0.0
        W = np.linalg.solve(Z.T @ Z + reg, Z.T @ Y).T  # (x_dim, F)
        x_dim = Y.shape[1]
        self.A = W[:, :x_dim]  # (x_dim, x_dim)
        self.B = W[:, x_dim:-1] if us is not None else None  # (x_dim, u_dim)
        self.c = W[:, -1]  # (x_dim,)
        return self

    def forecast(self, x_last: np.ndarray, u_future: np.ndarray | None, horizon: int) -> np.ndarray:
        """Open-loop rollout from the last observation.

        x_last: (B, x_dim); u_future: (B, H, u_dim) or None, u_future[:, k] drives x̂_{k+1}.
        Returns (B, H, x_dim).
        """
        if self.A is None:
            raise RuntimeError("LinearARX.forecast called before fit")
        x = np.asarray(x_last, dtype=np.float64)  # (B, x_dim)
        if self.B is not None and u_future is None:
            raise ValueError("model was fitted with controls; u_future is required")
        out = np.empty((x.shape[0], horizon, x.shape[1]))  # (B, H, x_dim)
        for k in range(horizon):
            x = x @ self.A.T + self.c  # (B, x_dim)
            if self.B is not None:
                x = x + np.asarray(u_future[:, k], dtype=np.float64) @ self.B.T
            out[:, k] = x
        return out


def kstep_rmse(pred: np.ndarray, truth: np.ndarray) -> list:
    """Per-horizon RMSE. pred, truth: (B, H, x_dim) -> list of H floats
    (entry k-1 = sqrt of the mean over sequences and dims of the squared error at step k)."""
    err = (np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)) ** 2  # (B, H, x_dim)
    return [float(v) for v in np.sqrt(err.mean(axis=(0, 2)))]


def kstep_windows(xs: list, us: list | None, context: int, horizon: int):
    """Cut one (context, future) window from the start of each long-enough sequence.

    xs: list of (L_i, x_dim); us: list of (L_i, u_dim) or None. Only sequences with
    L_i >= context + horizon are used. Returns
      x_context (B, C, x_dim) = x_0..x_{C-1},
      u_future  (B, H, u_dim) = u_{C-1}..u_{C+H-2} (drive x_C..x_{C+H-1}), or None,
      x_future  (B, H, x_dim) = x_C..x_{C+H-1},
      index     (B,) indices into xs of the sequences used.
    """
    C, H = context, horizon
    if C < 1 or H < 1:
        raise ValueError(f"context and horizon must be >= 1, got context={C}, horizon={H}")
    index = np.array([i for i, x in enumerate(xs) if len(x) >= C + H], dtype=np.int64)  # (B,)
    if index.size == 0:
        longest = max((len(x) for x in xs), default=0)
        raise ValueError(f"no sequence long enough for k-step windows: longest length {longest} < context+horizon {C + H}")
    x_context = np.stack([np.asarray(xs[i])[:C] for i in index])  # (B, C, x_dim)
    x_future = np.stack([np.asarray(xs[i])[C:C + H] for i in index])  # (B, H, x_dim)
    u_future = None
    if us is not None:
        u_future = np.stack([np.asarray(us[i])[C - 1:C + H - 1] for i in index])  # (B, H, u_dim)
    return x_context, u_future, x_future, index
