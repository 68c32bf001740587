"""The files of a run that training derives: metrics.jsonl and best.pt after each epoch, the plots at
the end, and data handed over as arrays written as the run's ``data.npz``.

metrics.jsonl and best.pt are derived from the trainer's state (and so from checkpoint.pt): a resumed
run writes them again (:func:`write_derived`) and so repairs them after a kill at any moment.
"""

from __future__ import annotations

import os

import numpy as np

ARRAYS_SOURCE = "<arrays>"
"""The ``source`` of data handed over as arrays; a run directory gets them as ``data.npz``."""

DATA_FILE = "data.npz"
"""The file in a run directory that holds data handed over as arrays (its ``config.data.source``)."""


def save_arrays(path: str, data) -> None:
    """Write in-memory trajectory data as a trajectory .npz that :func:`dvae.data.load_npz` reads back
    to the same sequences: ``obs`` (N, T+1, x_dim) padded, ``actions`` (N, T, u_dim), ``lengths``, the
    conditions as ``cond``, and the scalar metadata."""
    from dvae.files import atomic_write

    atomic_write(path, lambda f: np.savez(f, **trajectory_arrays(data)))


def trajectory_arrays(data) -> dict:
    """The arrays :func:`save_arrays` writes."""
    N, L = len(data.xs), max(len(x) for x in data.xs)
    obs = np.zeros((N, L, data.x_dim), np.float32)  # (N, T+1, x_dim); padding repeats nothing, masked by lengths
    for i, x in enumerate(data.xs):
        obs[i, :len(x)] = x
    arrays = {"obs": obs, "lengths": np.array([len(x) - 1 for x in data.xs], np.int64)}
    if data.us is not None:
        actions = np.zeros((N, L - 1, data.u_dim), np.float32)  # (N, T, u_dim): the last control of each is unused
        for i, u in enumerate(data.us):
            actions[i, :len(u) - 1] = u[:-1]
        arrays["actions"] = actions
    if data.cs is not None:
        arrays["cond"] = np.asarray(data.cs, np.float32)
    if data.meta.get("frame_shape") is not None:
        arrays["frame_shape"] = np.asarray(data.meta["frame_shape"], np.int64)
    for k, v in data.meta.items():
        if k not in arrays and isinstance(v, (int, float, str, bool)) and k not in ("num_actions", "num_labels"):
            arrays[k] = np.array(v)
    return arrays


def write_derived(run_dir, trainer, best: bool = True) -> None:
    """metrics.jsonl and best.pt, both derived from the trainer's state (and so from checkpoint.pt)."""
    from dvae.run import BEST, save_torch, write_metrics

    write_metrics(run_dir, trainer.rows)
    if best and trainer.best_model is not None:
        save_torch(os.path.join(run_dir, BEST), {"model": trainer.best_model, "epoch": trainer.state["best_epoch"]})


def write_train_plots(run_dir, model, config, data, normalizer, rows, stop=()) -> list:
    """training_curves.png, reconstruction.png and (trajectory data) prediction.png of a test sequence;
    the paths written. ``stop``: a container that becomes non-empty when the plots should stop (a signal)."""
    import torch

    from dvae.data import collate
    from dvae.eval import plot_predictions, plot_reconstructions, plot_training_curves, predict_windows
    from dvae.data.batching import sequence_lengths

    from dvae.eval.names import action_names, obs_names

    names = {"dim_names": obs_names(data.meta, config.model.x_dim, config.data.source)}  # units where known
    written = []
    path = os.path.join(run_dir, "training_curves.png")
    plot_training_curves(rows, path)
    written.append(path)
    if stop:
        return written

    xs, us = data.subset("test")
    cs = data.conditions("test", config.model.c_dim) if config.model.c_dim else None
    i = int(np.argmax(sequence_lengths(xs)))  # lazily read data: from the lengths, nothing read
    x, u = xs[i][:400], None if us is None else us[i][:400]
    batch = collate([torch.from_numpy(normalizer.x([x])[0])],
                    None if u is None else [torch.from_numpy(normalizer.u([u])[0])],
                    None if cs is None else [torch.from_numpy(cs[i])]).to(model.device)
    torch.manual_seed(config.train.seed)
    rec = model.reconstruct(batch, num_samples=32)["x_mean"][:, 0]  # (S, L, x_dim)
    rec = normalizer.x_inverse(rec).cpu().numpy()
    path = os.path.join(run_dir, "reconstruction.png")
    if getattr(config.model, "frame_shape", None):
        from dvae.eval.plots import plot_frame_strips
        plot_frame_strips(x, rec.mean(0), config.model.frame_shape, path, title="Reconstruction (step t)",
                          row_names=("truth", "reconstruction", "|error|"), first_step=0)
    else:
        plot_reconstructions(x, rec.mean(0), np.quantile(rec, 0.05, 0), np.quantile(rec, 0.95, 0), path,
                             kind=config.kind, token_names=getattr(data, "vocab", None), **names)
    written.append(path)
    if config.kind == "continuous" and len(x) >= 4 and not stop:
        context = max(2, len(x) // 3)
        horizon = len(x) - context
        w = predict_windows(model, normalizer, [x], None if u is None else [u], context, horizon, num_samples=64,
                            cs=None if cs is None else cs[i:i + 1])
        path = os.path.join(run_dir, "prediction.png")
        plot_predictions(x, context, w["mean"][0], w["lo"][0], w["hi"][0], path, controls=u, **names,
                         control_names=action_names(data.meta, config.model.u_dim, config.data.source))
        written.append(path)
    return written
