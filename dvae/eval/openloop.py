"""Open-loop k-step prediction: a model (any family, through its ``predict``) against the persistence
and linear ARX baselines, all scored in the data's original units."""

from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import torch

from dvae.data.batch import collate
from dvae.eval.baselines import LinearARX, kstep_rmse, kstep_windows, persistence_forecast


@torch.no_grad()
def predict_windows(model, normalizer, xs, us, context: int, horizon: int, num_samples: int = 64,
                    batch_size: int = 64, cs=None) -> Dict[str, np.ndarray]:
    """Predict every window of ``xs`` (data units) long enough for ``context + horizon`` (``cs``: the
    sequences' conditions (N, c_dim), for a conditional model).

    Returns ``x_context`` (B, C, x_dim), ``x_future`` (B, H, x_dim) truth, ``u_future`` or None,
    ``mean`` (B, H, x_dim) predictive mean, ``lo``/``hi`` (B, H, x_dim) its 5% and 95% quantiles,
    ``std`` (B, H, x_dim) the standard deviation of the predictive samples, ``index`` (B,) of the
    sequences used; all in data units.
    """
    x_ctx, u_fut, x_fut, index = kstep_windows(xs, us, context, horizon)
    device = model.device
    means, los, his, stds = [], [], [], []
    for start in range(0, len(index), batch_size):
        sl = slice(start, start + batch_size)
        ctx_x = normalizer.x(list(x_ctx[sl]))
        ctx_u = None if us is None else normalizer.u([us[i][:context] for i in index[sl]])
        batch = collate([torch.from_numpy(x) for x in ctx_x],
                        None if ctx_u is None else [torch.from_numpy(u) for u in ctx_u],
                        None if cs is None else [torch.as_tensor(cs[i]) for i in index[sl]]).to(device)
        u_f = None
        if u_fut is not None:
            u_f = torch.from_numpy(np.stack(normalizer.u(list(u_fut[sl])))).to(device)  # (b, H, u_dim)
        out = model.predict(batch, u_f, horizon, num_samples)
        x_mean = normalizer.x_inverse(out["x_mean"]).mean(0)  # (b, H, x_dim): mean of the mixture
        x_samples = normalizer.x_inverse(out["x"])  # (S, b, H, x_dim)
        q = torch.quantile(x_samples, torch.tensor([0.05, 0.95], device=device, dtype=x_samples.dtype), dim=0)
        means.append(x_mean.cpu().numpy()), los.append(q[0].cpu().numpy()), his.append(q[1].cpu().numpy())
        stds.append(x_samples.std(0).cpu().numpy())
    return {"x_context": x_ctx, "x_future": x_fut, "u_future": u_fut, "index": index,
            "mean": np.concatenate(means), "lo": np.concatenate(los), "hi": np.concatenate(his),
            "std": np.concatenate(stds)}


def gaussian_nll(truth: np.ndarray, mean: np.ndarray, std: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """-log N(truth; mean, std^2) summed over the last dim: (B, H, x_dim) -> (B, H)."""
    var = np.maximum(std, floor) ** 2
    return 0.5 * (np.log(2 * np.pi * var) + (truth - mean) ** 2 / var).sum(-1)


def bernoulli_nll(truth: np.ndarray, prob: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """-log Bernoulli(truth; prob) summed over the last dim: (B, H, x_dim) -> (B, H)."""
    p = np.clip(prob, floor, 1 - floor)
    return -(truth * np.log(p) + (1 - truth) * np.log1p(-p)).sum(-1)


def kstep_report(model, normalizer, xs, us, train_xs, train_us, context: int, horizon: int,
                 num_samples: int = 64, plot_dir: Optional[str] = None, num_plots: int = 3, cs=None,
                 dim_names=None, control_names=None) -> dict:
    """``kstep_rmse`` of the model, ``kstep_nll`` (nats per observation vector, of the truth under a
    Gaussian matched to the predictive samples' mean and spread; for a Bernoulli emitter, under the
    predictive distribution of each element, a Bernoulli with the mean of the emitter's probabilities
    over the samples), ``kstep_coverage90`` of its 90% band, and the baselines' RMSE. With ``plot_dir``:
    ``kstep_errors.png`` (RMSE against k for the model and the baselines) and, for the first
    ``num_plots`` windows, ``prediction_<i>.png`` (or, for frames (``model.config.frame_shape``),
    ``frames_<i>.png``: truth, prediction and error as frame strips); their paths are returned under
    ``plots``. The predictions name their panels by ``dim_names`` and draw the window's controls
    underneath (named by ``control_names``); ``dvae.eval.names`` finds both for a data set."""
    w = predict_windows(model, normalizer, xs, us, context, horizon, num_samples, cs=cs)
    truth = w["x_future"]
    binary = getattr(model.config, "likelihood", "gaussian") == "bernoulli"
    frame_shape = getattr(model.config, "frame_shape", None)
    inside = (truth >= w["lo"]) & (truth <= w["hi"])  # (B, H, x_dim)
    linear = LinearARX().fit(train_xs, train_us).forecast(w["x_context"][:, -1], w["u_future"], horizon)
    persistence = persistence_forecast(w["x_context"], horizon)
    out = {
        "context": context, "horizon": horizon, "num_windows": int(len(w["index"])),
        "kstep_rmse": kstep_rmse(w["mean"], truth),
        "kstep_nll": (bernoulli_nll(truth, w["mean"]) if binary else
                      gaussian_nll(truth, w["mean"], w["std"])).mean(0).tolist(),
        "kstep_coverage90": inside.mean(axis=(0, 2)).tolist(),
        "baselines": {"persistence": {"kstep_rmse": kstep_rmse(persistence, truth)},
                      "linear": {"kstep_rmse": kstep_rmse(linear, truth)}},
    }
    if plot_dir is not None:
        from dvae.eval.plots import plot_frame_strips, plot_kstep_errors, plot_predictions

        os.makedirs(plot_dir, exist_ok=True)
        plots = [os.path.join(plot_dir, "kstep_errors.png")]
        plot_kstep_errors({"model": out["kstep_rmse"], "persistence": out["baselines"]["persistence"]["kstep_rmse"],
                           "linear": out["baselines"]["linear"]["kstep_rmse"]}, plots[0])
        for j in range(min(num_plots, len(w["index"]))):
            if frame_shape:
                path = os.path.join(plot_dir, f"frames_{int(w['index'][j])}.png")
                plot_frame_strips(truth[j], w["mean"][j], frame_shape, path, context_frames=w["x_context"][j])
                plots.append(path)
                continue
            path = os.path.join(plot_dir, f"prediction_{int(w['index'][j])}.png")
            window = np.concatenate([w["x_context"][j], truth[j]])  # (C + H, x_dim)
            controls = None if us is None else np.asarray(us[int(w["index"][j])][:context + horizon - 1])  # (L-1, u_dim)
            plot_predictions(window, context, w["mean"][j], w["lo"][j], w["hi"][j], path, dim_names=dim_names,
                             baselines={"linear": linear[j], "persistence": persistence[j]}, controls=controls,
                             control_names=control_names)
            plots.append(path)
        out["plots"] = plots
    return out
