"""``dvae generate`` (sequences from the prior) and ``dvae impute`` (missing observations of an .npz
filled from the posterior): flags, then :meth:`dvae.Run.generate` / :meth:`dvae.Run.impute`, printed
or written."""

from __future__ import annotations

import numpy as np

from dvae.commands.common import add_common, load_run, method_defaults


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample sequences from the prior; text runs decode them to tokens")
    d = method_defaults("generate")
    p.add_argument("run_dir", help="a run directory written by dvae train")
    p.add_argument("--num-samples", type=int, default=d["num_samples"], help="sequences drawn")
    p.add_argument("--steps", type=int, default=d["num_steps"],
                   help="time steps per sample (text: at most, cut at <eos>); controls, where the model takes "
                        "them, are zero in data units")
    add_common(p, device_and_seed=True)


def add_impute(sub) -> None:
    p = sub.add_parser("impute", help="fill the missing (NaN) observations of an .npz from the posterior")
    p.add_argument("run_dir", help="a run directory written by dvae train --missing nan")
    p.add_argument("--data", required=True, help="a trajectory .npz whose NaN entries of obs are missing")
    p.add_argument("--out", required=True, help="output .npz: obs filled, obs_mean, obs_lo, obs_hi, missing")
    p.add_argument("--num-samples", type=int, default=method_defaults("impute")["num_samples"],
                   help="posterior predictive samples")
    add_common(p, device_and_seed=True)


def cmd_generate(a) -> dict:
    return load_run(a).generate(a.steps, a.num_samples, seed=a.seed)


def cmd_impute(a) -> dict:
    from dvae.data import load_npz
    from dvae.files import atomic_write

    if not a.data.endswith(".npz"):
        raise ValueError(f"{a.data}: impute reads a trajectory .npz")
    run = load_run(a)
    data = load_npz(a.data, missing=True)
    filled = run.impute(data, num_samples=a.num_samples, seed=a.seed)  # ragged: lists of (L_i, x_dim)
    with np.load(a.data, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    obs = np.asarray(arrays["obs"], np.float32)
    obs = obs[..., None] if obs.ndim == 2 else obs  # (N, T+1, x_dim)
    missing = np.isnan(obs)
    out = {f"obs_{k}": np.full_like(obs, np.nan) for k in ("mean", "lo", "hi")}
    obs = obs.copy()
    for i, x in enumerate(filled["x"]):  # real steps only; padding is left as it was
        L = len(x)
        obs[i, :L] = x
        for k in ("mean", "lo", "hi"):
            out[f"obs_{k}"][i, :L] = filled[k][i]
    arrays.update(obs=obs, missing=missing, **out)
    atomic_write(a.out, lambda f: np.savez(f, **arrays))
    return {"run_dir": a.run_dir, "data": a.data, "out": a.out, "num_sequences": len(data.xs),
            "num_missing_entries": int(sum(np.isnan(x).sum() for x in data.xs)), "num_samples": a.num_samples}
