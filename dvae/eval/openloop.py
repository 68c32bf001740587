"""Open-loop k-step prediction: a model (any family, through its ``predict``) against the persistence
and linear ARX baselines, all scored in the data's original units."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from dvae.data.batch import collate
from dvae.eval.baselines import LinearARX, kstep_rmse, kstep_windows, persistence_forecast


@torch.no_grad()
def predict_windows(model, normalizer, xs, us, context: int, horizon: int, num_samples: int = 64,
                    batch_size: int = 64) -> Dict[str, np.ndarray]:
    """Predict every window of ``xs`` (data units) long enough for ``context + horizon``.

    Returns ``x_context`` (B, C, x_dim), ``x_future`` (B, H, x_dim) truth, ``u_future`` or None,
    ``mean`` (B, H, x_dim) predictive mean, ``lo``/``hi`` (B, H, x_dim) its 5% and 95% quantiles,
    ``index`` (B,) of the sequences used; all in data units.
    """
    x_ctx, u_fut, x_fut, index = kstep_windows(xs, us, context, horizon)
    device = model.device
    means, los, his = [], [], []
    for start in range(0, len(index), batch_size):
        sl = slice(start, start + batch_size)
        ctx_x = normalizer.x(list(x_ctx[sl]))
        ctx_u = None if us is None else normalizer.u([us[i][:context] for i in index[sl]])
        batch = collate([torch.from_numpy(x) for x in ctx_x],
                        None if ctx_u is None else [torch.from_numpy(u) for u in ctx_u]).to(device)
        u_f = None
        if u_fut is not None:
            u_f = torch.from_numpy(np.stack(normalizer.u(list(u_fut[sl])))).to(device)  # (b, H, u_dim)
        out = model.predict(batch, u_f, horizon, num_samples)
        x_mean = normalizer.x_inverse(out["x_mean"]).mean(0)  # (b, H, x_dim): mean of the mixture
        x_samples = normalizer.x_inverse(out["x"])  # (S, b, H, x_dim)
        q = torch.quantile(x_samples, torch.tensor([0.05, 0.95], device=device, dtype=x_samples.dtype), dim=0)
        means.append(x_mean.cpu().numpy()), los.append(q[0].cpu().numpy()), his.append(q[1].cpu().numpy())
    return {"x_context": x_ctx, "x_future": x_fut, "u_future": u_fut, "index": index,
            "mean": np.concatenate(means), "lo": np.concatenate(los), "hi": np.concatenate(his)}


def kstep_report(model, normalizer, xs, us, train_xs, train_us, context: int, horizon: int,
                 num_samples: int = 64, windows: Optional[dict] = None) -> dict:
    """``kstep_rmse`` of the model, ``kstep_coverage90`` of its 90% band, and the baselines' RMSE."""
    w = windows or predict_windows(model, normalizer, xs, us, context, horizon, num_samples)
    truth = w["x_future"]
    inside = (truth >= w["lo"]) & (truth <= w["hi"])  # (B, H, x_dim)
    arx = LinearARX().fit(train_xs, train_us)
    linear = arx.forecast(w["x_context"][:, -1], w["u_future"], horizon)
    return {
        "context": context, "horizon": horizon, "num_windows": int(len(w["index"])),
        "kstep_rmse": kstep_rmse(w["mean"], truth),
        "kstep_coverage90": inside.mean(axis=(0, 2)).tolist(),
        "baselines": {"persistence": {"kstep_rmse": kstep_rmse(persistence_forecast(w["x_context"], horizon), truth)},
                      "linear": {"kstep_rmse": kstep_rmse(linear, truth)}},
    }
