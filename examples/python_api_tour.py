#!/usr/bin/env python
"""The three uses of docs/tutorial.md and docs/python-api.md at full size: the figures and the
numbers the tutorial quotes.

    python examples/python_api_tour.py --out docs/figures/python-api --work-dir runs/python-api-tour
    python examples/python_api_tour.py --quick --out /tmp/tour         # tiny sizes: a smoke test

1. Arrays of control trajectories (a damped oscillator pushed by u): ``dvae.fit``, ``run.predict``
   with a 90% band (``forecast.png``), ``run.evaluate`` with k-step errors.
2. Pendulum-v1: ``dvae.fit("pendulum")``, an open-loop forecast of an unseen real episode under its
   own controls (``pendulum_forecast.png``), ``run.env`` stepped, ``run.plan`` against the random and
   true-model baselines.
3. dvae/LinearGaussian-v0: the DMM's -ELBO, IW bound and particle-filter estimate against the fitted
   LGSSM's exact NLL and the true system's (the floor), on the same test sequences (``bounds.png``).

Writes ``OUT/results.json`` and the three figures (the Pendulum run directory under ``--work-dir``),
every file through the atomic writer ``dvae.files``; prints the results as JSON. The tutorial's
figures: ``--out docs/figures/python-api --work-dir runs/python-api-tour``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import dvae  # noqa: E402
from dvae.files import save_figure, write_json  # noqa: E402


def oscillator(episodes: int, steps: int, seed: int):
    """The page's data: x (N, T+1, 2), u (N, T, 1)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1, 1, size=(episodes, steps, 1))
    x = np.zeros((episodes, steps + 1, 2))
    for t in range(steps):
        x[:, t + 1] = x[:, t] @ [[0.99, -0.1], [0.1, 0.95]] + [0, 0.1] * u[:, t] + 0.01 * rng.normal(size=(episodes, 2))
    return x, u


def bounds_figure(lg: dict, path: str) -> None:
    """The five numbers of use 3 as horizontal bars (nats per step, lower is better)."""
    rows = [("DMM -ELBO (upper bound)", lg["dmm_neg_elbo_per_step"]),
            ("DMM IW bound, K=64", lg["dmm_nll_iw_per_step"]),
            ("DMM particle filter, 256", lg["dmm_nll_pf_per_step"]),
            ("LGSSM exact NLL (fitted)", lg["lgssm_nll_exact_per_step"]),
            ("true system's NLL (floor)", lg["true_nll_per_step"])]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [v for _, v in rows], color=["C0", "C0", "C0", "C1", "0.4"])
    for yi, (_, v) in zip(y, rows):
        ax.text(v, yi, f" {v:.3f}", va="center", fontsize=8)
    ax.set_yticks(y, [n for n, _ in rows])
    lo = min(v for _, v in rows)
    ax.set_xlim(min(0.0, lo - 0.1 * abs(lo)), max(v for _, v in rows) * 1.15 + 0.1)
    ax.set(xlabel="test NLL, nats per step (lower is better)", title="dvae/LinearGaussian-v0: bounds against the exact NLL")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/python-api-tour", help="results.json and forecast.png")
    p.add_argument("--work-dir", default=None, help="the Pendulum run directory goes here (default OUT/work)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    quick = dict(epochs=1, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8) if a.quick else {}
    os.makedirs(a.out, exist_ok=True)
    work = a.work_dir or os.path.join(a.out, "work")
    t0 = time.perf_counter()
    res = {"command": "python examples/python_api_tour.py " + " ".join(sys.argv[1:] if argv is None else argv)}

    # --- 1. arrays of control trajectories, a forecast with a band ---
    x, u = oscillator(16 if a.quick else 64, 50, a.seed)
    run = dvae.fit(x, u, model="dmm", seed=a.seed, no_progress=True, **{"epochs": 40, **quick},
                   obs_names=["position", "velocity"])
    forecast = run.predict(x[0, :20], u[0, :19], future_actions=u[0, 19:49], seed=a.seed)
    forecast.plot(truth=x[0, 20:50], path=os.path.join(a.out, "forecast.png"))
    plt.close("all")
    lo, hi = forecast.quantile([0.05, 0.95])
    ev = run.evaluate(iw_samples=16, context=20, horizon=20, seed=a.seed)
    res["oscillator"] = {"best_epoch": run.summary["best_epoch"], "train_seconds": run.summary["train_seconds"],
                         "forecast_rmse": float(np.sqrt(((forecast.mean - x[0, 20:50]) ** 2).mean())),
                         "forecast_coverage90": float(((x[0, 20:50] >= lo) & (x[0, 20:50] <= hi)).mean()),
                         **{k: ev[k] for k in ("neg_elbo_per_step", "nll_iw_per_step", "kstep_rmse", "kstep_coverage90")},
                         "kstep_rmse_linear": ev["baselines"]["linear"]["kstep_rmse"]}

    # --- 2. a run as an env and a planner ---
    pend = dvae.fit("pendulum", seed=a.seed, no_progress=True, no_plots=True, out=os.path.join(work, "pendulum"),
                    **({"episodes": 8, "steps": 16, **quick} if a.quick else {"epochs": 60}))
    import envs

    real = envs.collect("Pendulum-v1", 1, 64, policy="ou", seed=a.seed + 1000)  # an episode the run never saw
    pf = pend.predict(real["obs"][0, :16], real["actions"][0, :15], future_actions=real["actions"][0, 15:63], seed=a.seed)
    pf.plot(truth=real["obs"][0, 16:64], path=os.path.join(a.out, "pendulum_forecast.png"))
    plt.close("all")
    env = pend.env("Pendulum-v1")
    obs, _ = env.reset(seed=a.seed)
    obs, reward, *_ = env.step(env.action_space.sample())
    plan = pend.plan("Pendulum-v1", episodes=1, seed=a.seed,
                     **(dict(max_steps=5, num_samples=16, iterations=1, horizon=3) if a.quick else dict(max_steps=100)))
    res["pendulum"] = {"best_epoch": pend.summary["best_epoch"], "train_seconds": pend.summary["train_seconds"],
                       "forecast_rmse": float(np.sqrt(((pf.mean - real["obs"][0, 16:64]) ** 2).mean())),
                       "imagined_step": {"obs": obs.tolist(), "reward": reward},
                       **{k: plan[k] for k in ("mean_return", "baselines", "normalized_return") if k in plan}}

    # --- 3. bounds against the exact likelihood ---
    import gymnasium as gym

    data = envs.collect("dvae/LinearGaussian-v0", 16 if a.quick else 128, 50, policy="ou", seed=a.seed)
    dmm = dvae.fit(data["obs"], data["actions"], model="dmm", seed=a.seed, no_progress=True, **{"epochs": 40, **quick})
    lgssm = dvae.fit(data["obs"], data["actions"], model="lgssm", seed=a.seed, no_progress=True,
                     **({"epochs": 1} if a.quick else {"epochs": 40}))
    r = dmm.evaluate(iw_samples=64, particles=256, seed=a.seed)
    true = gym.make("dvae/LinearGaussian-v0").unwrapped
    test = dmm.data.splits["test"]
    exact = -sum(true.log_likelihood(data["obs"][i], data["actions"][i]) for i in test) / (len(test) * 51)
    res["linear_gaussian"] = {"test_sequences": len(test), "dmm_neg_elbo_per_step": r["neg_elbo_per_step"],
                              "dmm_nll_iw_per_step": r["nll_iw_per_step"], "dmm_nll_pf_per_step": r["nll_pf_per_step"],
                              "lgssm_nll_exact_per_step": lgssm.evaluate(seed=a.seed)["nll_exact_per_step"],
                              "true_nll_per_step": exact}
    bounds_figure(res["linear_gaussian"], os.path.join(a.out, "bounds.png"))
    res["seconds"] = time.perf_counter() - t0
    write_json(os.path.join(a.out, "results.json"), res, indent=2)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
