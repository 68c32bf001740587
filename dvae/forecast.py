"""Sampled futures of :meth:`dvae.Run.predict`, in data units: :class:`Forecast`."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from dvae.arrays import shape_error, to_numpy


class Forecast:
    """Sampled futures of :meth:`Run.predict`, in data units.

    ``mean`` (H, x_dim), or (B, H, x_dim) for a batch: the predictive mean; ``samples`` (num_samples,
    H, x_dim) or (num_samples, B, H, x_dim); ``context`` the observations it was conditioned on;
    ``future_actions`` the controls that drove it (None: uncontrolled).
    """

    def __init__(self, mean: np.ndarray, samples: np.ndarray, context: np.ndarray,
                 future_actions: Optional[np.ndarray] = None, names: Optional[Sequence[str]] = None):
        self.mean, self.samples, self.context, self.future_actions = mean, samples, context, future_actions
        self.names = names

    def __repr__(self) -> str:
        return f"Forecast(mean {self.mean.shape}, samples {self.samples.shape})"

    @property
    def horizon(self) -> int:
        return self.mean.shape[-2]

    def quantile(self, q) -> np.ndarray:
        """The ``q`` quantile(s) of the samples at every step: shaped as ``mean`` (a list of q: stacked first)."""
        q_arr = np.asarray(q, np.float64)
        if not np.all((q_arr >= 0) & (q_arr <= 1)):
            raise ValueError(f"q: expected quantiles in [0, 1], got {q}")
        return np.quantile(self.samples, q_arr, axis=0)

    def plot(self, truth=None, index: int = 0, level: float = 0.9, path: Optional[str] = None):
        """The context, the predictive mean with its ``level`` band (and ``truth`` (H, x_dim) when
        given) per dimension, against the step; the controls under it. ``index``: which sequence of a
        batch. Returns the matplotlib Figure (saved to ``path`` when given)."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        batched = self.mean.ndim == 3
        mean = self.mean[index] if batched else self.mean  # (H, x_dim)
        samples = self.samples[:, index] if batched else self.samples  # (S, H, x_dim)
        context = self.context[index] if batched else self.context  # (C, x_dim)
        u = None if self.future_actions is None else (self.future_actions[index] if batched else self.future_actions)
        lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
        if truth is not None:
            truth = to_numpy(truth, "truth", f"the true future ({self.horizon}, x_dim)")
            truth = truth[index] if truth.ndim == 3 else truth
            if truth.ndim == 1 and mean.shape[1] == 1:
                truth = truth[:, None]
            if truth.shape != mean.shape:
                raise shape_error("truth", f"({mean.shape[0]}, {mean.shape[1]}) (horizon, x_dim)", truth)
        x_dim, C, H = mean.shape[1], len(context), len(mean)
        rows = x_dim + (u is not None)
        fig, axes = plt.subplots(rows, 1, figsize=(7, 1.8 * rows + 0.6), sharex=True, squeeze=False)
        t_ctx, t_fut = np.arange(C), np.arange(C, C + H)
        for d in range(x_dim):
            ax = axes[d, 0]
            ax.plot(t_ctx, context[:, d], color="black", lw=1.2, label="observed")
            ax.fill_between(t_fut, lo[:, d], hi[:, d], color="C0", alpha=0.25, label=f"{level:.0%} band")
            ax.plot(t_fut, mean[:, d], color="C0", lw=1.5, label="predictive mean")
            if truth is not None:
                ax.plot(t_fut, truth[:, d], color="black", ls="--", lw=1.0, label="truth")
            ax.axvline(C - 0.5, color="grey", lw=0.8, ls=":")
            ax.set_ylabel(self.names[d] if self.names else f"x[{d}]")
        axes[0, 0].legend(loc="best", fontsize=8)
        if u is not None:
            ax = axes[-1, 0]
            ax.step(np.arange(C - 1, C - 1 + H), u, where="post", lw=1.0)
            ax.set_ylabel("controls")
        axes[-1, 0].set_xlabel("step")
        axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        if path is not None:
            from dvae.run import atomic_write_bytes

            atomic_write_bytes(path, lambda f: fig.savefig(f, format=os.path.splitext(path)[1][1:] or "png", dpi=110))
        return fig
