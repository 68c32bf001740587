"""Matplotlib (Agg) figures for training curves, reconstructions and forecasts.

Every function saves a PNG to ``path`` through the atomic writer, closes its figure and returns the
Figure (tests read its axes, labels, legends and ticks). What people read: dimension names (with
units where known, ``dvae.eval.names``), the band's level in the legend, integer ticks for epochs,
steps and horizons, the best epoch marked, the bound's terms drawn, the controls under a prediction,
the keys of a piano roll.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

MAX_DIMS = 6


def _save(fig, path):
    from dvae.files import save_figure  # atomic, never through a symlink at path

    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)  # the Figure object stays inspectable (tests read its axes)
    return fig


def _dim_axes(n, title):
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.8 * n + 0.8), sharex=True, squeeze=False)
    fig.suptitle(title)
    return fig, axes[:, 0]


def _names(dim_names, n, letter="x"):
    return list(dim_names) if dim_names is not None else [f"{letter}[{d}]" for d in range(n)]


def _integer_ticks(axis):
    axis.set_major_locator(MaxNLocator(integer=True))


def _band_label(level: float) -> str:
    return f"{level:.0%} band"


def plot_training_curves(rows: list, path):
    """rows: metrics.jsonl dicts with 'epoch', 'train_loss', 'valid_neg_elbo_per_step' and, when
    present, the parts of the bound ('valid_recon_per_step', 'valid_kl_per_step'; their 'train_'
    forms dashed). Three panels: the training objective, the validation -ELBO with the best epoch
    marked (the epoch of best.pt), and the reconstruction and KL terms per step. Epochs on integer
    ticks. Returns the Figure."""
    has_parts = any(r.get(k) is not None for r in rows for k in
                    ("valid_recon_per_step", "valid_kl_per_step", "recon_per_step", "kl_per_step"))
    fig, axes = plt.subplots(1, 3 if has_parts else 2, figsize=(15 if has_parts else 11, 4))
    ax0, ax1 = axes[0], axes[1]

    def series(*keys):
        for key in keys:
            pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                return [p[0] for p in pts], [p[1] for p in pts]
        return [], []

    ax0.plot(*series("train_loss"), marker=".", label="train loss (the objective)")
    ax0.set(title="Training loss", xlabel="epoch", ylabel="nats per step")
    ep, val = series("valid_neg_elbo_per_step")
    ax1.plot(ep, val, marker=".", label="valid -ELBO / step")
    best = None
    if val:
        finite = [(v, e) for e, v in zip(ep, val) if np.isfinite(v)]
        if finite:
            best_val, best = min(finite)
            ax1.plot([best], [best_val], marker="*", ms=14, color="C3", linestyle="none",
                     label=f"best epoch {best} ({best_val:.3g})")
    ax1.set(title="Validation -ELBO per step", xlabel="epoch", ylabel="nats per step")
    if has_parts:
        ax2 = axes[2]
        for j, (part, name) in enumerate((("recon", "reconstruction"), ("kl", "KL"))):
            e, v = series(f"valid_{part}_per_step", f"{part}_per_step")
            if e:
                ax2.plot(e, v, marker=".", color=f"C{j}", label=f"valid {name} / step")
            e, v = series(f"train_{part}_per_step")
            if e:
                ax2.plot(e, v, linestyle="--", color=f"C{j}", label=f"train {name} / step")
        ax2.set(title="The bound's two terms", xlabel="epoch", ylabel="nats per step")
    for ax in axes:
        if best is not None:
            ax.axvline(best, color="C3", linestyle=":", lw=1)
        _integer_ticks(ax.xaxis)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _piano_roll_ticks(ax, x_dim: int):
    """Key names on a piano roll's axis: the C of every octave, when the roll is the 88 piano keys
    (MIDI 21..108, the polyphonic benchmarks' layout); MIDI-free key indices otherwise."""
    from dvae.eval.names import note_name

    if x_dim == 88:
        keys = [k for k in range(88) if (k + 21) % 12 == 0]  # the Cs: C1 (MIDI 24) .. C8 (108)
        ax.set_yticks(keys, [f"{note_name(k + 21)} ({k + 21})" for k in keys])
        ax.set_ylabel("key (MIDI note)")
    else:
        _integer_ticks(ax.yaxis)
        ax.set_ylabel("key index")


def plot_reconstructions(truth, recon_mean, recon_lo, recon_hi, path, dim_names=None, binary=False,
                         kind=None, level: float = 0.9, token_names=None):
    """truth, recon_mean, recon_lo, recon_hi: (L, x_dim). One panel per dim (max 6) with a shaded
    [lo, hi] band (its ``level`` in the legend); ``kind="binary"`` (or ``binary=True``) draws piano
    rolls (truth, reconstruction probabilities) with the keys on the axis; ``kind="categorical"``
    draws one-hot tokens (truth, token probabilities) with the token ids, or ``token_names`` when
    there are at most 40, on the axis. Returns the Figure."""
    truth, mean = np.asarray(truth), np.asarray(recon_mean)  # (L, x_dim)
    kind = kind or ("binary" if binary else "continuous")
    if kind in ("binary", "categorical"):
        fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
        if kind == "binary":
            titles = ("Piano roll (truth)", "Reconstruction: probability of each key")
        else:
            titles = ("Tokens (truth, one-hot)", "Reconstruction: probability of each token")
        for ax, img, ttl in ((axes[0], truth, titles[0]), (axes[1], mean, titles[1])):
            im = ax.imshow(img.T, aspect="auto", origin="lower", cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(ttl)
            if kind == "binary":
                _piano_roll_ticks(ax, img.shape[1])
            elif token_names is not None and len(token_names) <= 40:
                ax.set_yticks(range(len(token_names)), list(token_names), fontsize="x-small")
                ax.set_ylabel("token")
            else:
                _integer_ticks(ax.yaxis)
                ax.set_ylabel("token id")
            fig.colorbar(im, ax=ax, label="probability" if ax is axes[1] else "on")
        axes[1].set_xlabel("time step")
        _integer_ticks(axes[1].xaxis)
        return _save(fig, path)
    n = min(truth.shape[1], MAX_DIMS)
    names = _names(dim_names, truth.shape[1])
    fig, axes = _dim_axes(n, "Reconstruction")
    t = np.arange(truth.shape[0])  # (L,)
    for d, ax in enumerate(axes):
        ax.plot(t, truth[:, d], color="k", label="truth")
        ax.plot(t, mean[:, d], color="C0", label="reconstruction mean")
        if recon_lo is not None and recon_hi is not None:
            ax.fill_between(t, np.asarray(recon_lo)[:, d], np.asarray(recon_hi)[:, d], color="C0", alpha=0.25,
                            label=_band_label(level))
        ax.set_ylabel(names[d])
    axes[0].legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel("time step")
    _integer_ticks(axes[-1].xaxis)
    return _save(fig, path)


def plot_predictions(truth, context: int, pred_mean, pred_lo, pred_hi, path, dim_names=None, baselines=None,
                     controls=None, control_names=None, level: float = 0.9):
    """truth: (L, x_dim) whole window; pred_mean, pred_lo, pred_hi: (H, x_dim) for steps
    context..context+H-1 (the band's ``level`` in the legend); baselines: {name: (H, x_dim)} drawn
    dashed. One panel per dim (max 6), named by ``dim_names``; ``controls`` (L - 1 or L, u_dim), u_t
    applied after x_t, drawn underneath as steps (named by ``control_names``). Returns the Figure."""
    truth, mean = np.asarray(truth), np.asarray(pred_mean)
    n = min(truth.shape[1], MAX_DIMS)
    names = _names(dim_names, truth.shape[1])
    u = None if controls is None else np.asarray(controls, dtype=float)
    if u is not None and u.ndim == 1:
        u = u[:, None]  # (L-1,) -> (L-1, 1)
    fig, axes = _dim_axes(n + (u is not None), "Prediction")
    t = np.arange(truth.shape[0])  # (L,)
    tp = context + np.arange(mean.shape[0])  # (H,)
    for d, ax in enumerate(axes[:n]):
        ax.plot(t, truth[:, d], color="k", label="truth")
        ax.axvline(context - 0.5, color="gray", linestyle=":", label="context end")
        ax.plot(tp, mean[:, d], color="C0", label="prediction mean")
        if pred_lo is not None and pred_hi is not None:
            ax.fill_between(tp, np.asarray(pred_lo)[:, d], np.asarray(pred_hi)[:, d], color="C0", alpha=0.25,
                            label=_band_label(level))
        for j, (name, b) in enumerate((baselines or {}).items()):
            ax.plot(tp, np.asarray(b)[:, d], linestyle="--", color=f"C{j + 1}", label=name)
        ax.set_ylabel(names[d])
    if u is not None:
        ax = axes[-1]
        cnames = _names(control_names, u.shape[1], "u")
        for j in range(min(u.shape[1], MAX_DIMS)):
            ax.step(np.arange(len(u)), u[:, j], where="post", color=f"C{j}", lw=1, label=cnames[j])
        ax.axvline(context - 0.5, color="gray", linestyle=":")
        ax.set_ylabel(cnames[0] if u.shape[1] == 1 else "controls")
        if u.shape[1] > 1:
            ax.legend(loc="upper left", fontsize="small")
    axes[0].legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("time step")
    _integer_ticks(axes[-1].xaxis)
    return _save(fig, path)


def plot_kstep_errors(kstep: dict, path, ylabel: str = "RMSE (data units)"):
    """kstep: {name: [RMSE at k=1..H]}; plots RMSE against horizon k (integer ticks) for each
    model/baseline. Returns the Figure."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, vals in kstep.items():
        ax.plot(np.arange(1, len(vals) + 1), vals, marker=".", label=name)
    ax.set(title="k-step prediction error", xlabel="horizon k (steps ahead)", ylabel=ylabel)
    _integer_ticks(ax.xaxis)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


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
    return _save(fig, path)
