"""Matplotlib (Agg) figures for training curves, reconstructions and forecasts.

Every function saves a PNG to ``path`` and closes its figure.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAX_DIMS = 6


def _save(fig, path):
    from dvae.files import save_figure  # atomic, never through a symlink at path

    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


def _dim_axes(n, title):
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.8 * n + 0.8), sharex=True, squeeze=False)
    fig.suptitle(title)
    return fig, axes[:, 0]


def _names(dim_names, n):
    return list(dim_names) if dim_names is not None else [f"x[{d}]" for d in range(n)]


def plot_training_curves(rows: list, path) -> None:
    """rows: metrics.jsonl dicts with 'epoch', 'train_loss', 'valid_neg_elbo_per_step'
    (optional 'kl_per_step', 'recon_per_step', drawn on the validation panel)."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))

    def series(key):
        pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        return ([p[0] for p in pts], [p[1] for p in pts])

    ax0.plot(*series("train_loss"), marker=".", label="train loss")
    ax0.set(title="Training loss", xlabel="epoch", ylabel="loss")
    ax1.plot(*series("valid_neg_elbo_per_step"), marker=".", label="-ELBO / step")
    for key, lab in (("kl_per_step", "KL / step"), ("recon_per_step", "recon / step")):
        ep, val = series(key)
        if ep:
            ax1.plot(ep, val, linestyle="--", label=lab)
    ax1.set(title="Validation -ELBO per step", xlabel="epoch", ylabel="nats per step")
    for ax in (ax0, ax1):
        ax.legend()
        ax.grid(alpha=0.3)
    _save(fig, path)


def plot_reconstructions(truth, recon_mean, recon_lo, recon_hi, path, dim_names=None, binary=False) -> None:
    """truth, recon_mean, recon_lo, recon_hi: (L, x_dim). One panel per dim (max 6) with a
    shaded [lo, hi] band; binary=True draws piano-roll images (truth, reconstruction probabilities)."""
    truth, mean = np.asarray(truth), np.asarray(recon_mean)  # (L, x_dim)
    if binary:
        fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
        for ax, img, ttl in ((axes[0], truth, "Truth (piano roll)"), (axes[1], mean, "Reconstruction probabilities")):
            im = ax.imshow(img.T, aspect="auto", origin="lower", cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set(title=ttl, ylabel="dimension")
            fig.colorbar(im, ax=ax)
        axes[1].set_xlabel("time step")
        _save(fig, path)
        return
    n = min(truth.shape[1], MAX_DIMS)
    names = _names(dim_names, truth.shape[1])
    fig, axes = _dim_axes(n, "Reconstruction")
    t = np.arange(truth.shape[0])  # (L,)
    for d, ax in enumerate(axes):
        ax.plot(t, truth[:, d], color="k", label="truth")
        ax.plot(t, mean[:, d], color="C0", label="recon mean")
        if recon_lo is not None and recon_hi is not None:
            ax.fill_between(t, np.asarray(recon_lo)[:, d], np.asarray(recon_hi)[:, d], color="C0", alpha=0.25, label="band")
        ax.set_ylabel(names[d])
    axes[0].legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel("time step")
    _save(fig, path)


def plot_predictions(truth, context: int, pred_mean, pred_lo, pred_hi, path, dim_names=None, baselines=None) -> None:
    """truth: (L, x_dim) whole window; pred_mean, pred_lo, pred_hi: (H, x_dim) for steps
    context..context+H-1; baselines: {name: (H, x_dim)} drawn dashed. One panel per dim (max 6)."""
    truth, mean = np.asarray(truth), np.asarray(pred_mean)
    n = min(truth.shape[1], MAX_DIMS)
    names = _names(dim_names, truth.shape[1])
    fig, axes = _dim_axes(n, "Prediction")
    t = np.arange(truth.shape[0])  # (L,)
    tp = context + np.arange(mean.shape[0])  # (H,)
    for d, ax in enumerate(axes):
        ax.plot(t, truth[:, d], color="k", label="truth")
        ax.axvline(context - 0.5, color="gray", linestyle=":", label="context end")
        ax.plot(tp, mean[:, d], color="C0", label="prediction mean")
        if pred_lo is not None and pred_hi is not None:
            ax.fill_between(tp, np.asarray(pred_lo)[:, d], np.asarray(pred_hi)[:, d], color="C0", alpha=0.25, label="90% band")
        for j, (name, b) in enumerate((baselines or {}).items()):
            ax.plot(tp, np.asarray(b)[:, d], linestyle="--", color=f"C{j + 1}", label=name)
        ax.set_ylabel(names[d])
    axes[0].legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("time step")
    _save(fig, path)


def plot_kstep_errors(kstep: dict, path) -> None:
    """kstep: {name: [RMSE at k=1..H]}; plots RMSE against horizon k for each model/baseline."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, vals in kstep.items():
        ax.plot(np.arange(1, len(vals) + 1), vals, marker=".", label=name)
    ax.set(title="k-step prediction error", xlabel="horizon k", ylabel="RMSE")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_frame_strips(truth, pred_mean, frame_shape, path, context_frames=None, max_frames: int = 12,
                      title: str = "Open-loop prediction", row_names=("truth", "prediction", "|error|"),
                      first_step: int = 1) -> None:
    """Frames in rows: the truth, the prediction (predictive mean: each pixel's probability of being on,
    or its mean intensity) and the absolute error; one column per predicted step k = 1.. (at most
    ``max_frames``, evenly spaced). ``truth``, ``pred_mean``: (H, x_dim) with x_dim = prod(frame_shape);
    ``context_frames`` (C, x_dim): the last context frame is drawn first, for reference. Columns are
    titled k = ``first_step`` + column index (0 for reconstructions of steps 0..)."""
    rows_h, cols_w = (int(v) for v in frame_shape)
    truth, mean = np.asarray(truth), np.asarray(pred_mean)  # (H, x_dim)
    H = truth.shape[0]
    ks = np.unique(np.linspace(0, H - 1, min(H, max_frames)).round().astype(int))  # columns: steps k - 1
    ctx = context_frames is not None and len(context_frames) > 0
    ncol = len(ks) + int(ctx)
    fig, axes = plt.subplots(3, ncol, figsize=(1.1 * ncol + 0.6, 3.9), squeeze=False)
    fig.suptitle(title)
    rows = tuple(zip(row_names, (truth, mean, np.abs(truth - mean))))
    for r, (name, imgs) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if ctx and c == 0:
                if r == 0:
                    ax.imshow(np.asarray(context_frames)[-1].reshape(rows_h, cols_w), cmap="gray", vmin=0, vmax=1)
                    ax.set_title("context", fontsize="small")
                else:
                    ax.axis("off")
                continue
            k = ks[c - int(ctx)]
            cmap = "magma" if r == 2 else "gray"
            ax.imshow(imgs[k].reshape(rows_h, cols_w), cmap=cmap, vmin=0, vmax=1)
            if r == 0:
                ax.set_title(f"k={k + first_step}", fontsize="small")
        axes[r, int(ctx)].set_ylabel(name, fontsize="small")
    _save(fig, path)
