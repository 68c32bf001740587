#!/usr/bin/env python
"""Time to quality: the test bound per step against training CPU time, per model family and objective.

    python bench/bench_convergence.py --polyphonic-dir ../shared/data/polyphonic --budget 1800   # the issue's runs
    python bench/bench_convergence.py --quick                                                    # < 1 minute

Two data sets:

- ``nottingham``: ``Nottingham.pickle`` from ``--polyphonic-dir`` (the library never reads it; without
  the flag this data set is skipped). Score: the test -ELBO per step (nats), one draw per sequence.
- ``lg``: the controlled linear-Gaussian system (``dvae/LinearGaussian-v0``, ``envs/linear_gaussian.py``:
  2-D state; ``--lg-episodes`` sequences of ``--lg-steps`` steps, split 80/10/10 as ``dvae train`` splits
  trajectories), whose exact test NLL under the true parameters comes from the Kalman filter
  (``envs.linear_gaussian.log_likelihood``, float64). Score: the test -ELBO per step, and at the
  end the K-sample importance-weighted bound (``--iw-samples``, default 64) of the best parameters, both
  against the exact NLL.

Each run is ``dvae train``'s defaults for a family (the configs from the train verb's own parser and
``dvae.fitting.train_configs``, with ``--objective``/``--train-samples`` and any ``--flags``), trained by
``Trainer.fit`` with no epoch cap (the default's schedule and convergence apply) in its own forked
process with one torch thread, for ``--budget`` seconds of ``time.process_time()`` of that process;
validation, the test evaluations and the latent diagnostics (skipped: they do not change training) run
with the clock paused. The test bound of the parameters of the moment is taken after every epoch
(every ``--test-every`` CPU seconds at most), and at the end the test bounds of the best-on-validation
parameters. Runs go one at a time unless ``--jobs`` (CPU time is robust to load only to first order).

Writes JSON to ``--out`` (default bench/results/convergence.json; convergence-quick.json with
``--quick``) and the curves to ``--figure`` (default beside the JSON, .png).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from bench.bench_quality import _bounds, _finite, _load  # noqa: E402
from studies.compare.budget import CpuBudget  # noqa: E402
from bench.bench_training import machine_info  # noqa: E402

from dvae.models import MODELS  # noqa: E402

FAMILIES = tuple(MODELS)
"""Every family `dvae train --model` takes (the registry's order)."""
OBJECTIVES = ("elbo", "iwae")
GOALS = {"nottingham": {"dmm": 3.2, "best": 3.0}, "lg": {"dmm_iw_gap": 0.05}}
"""Issue 18's goals at 30 CPU-minutes (Nottingham, test -ELBO per step) and 3 minutes (lg, IW gap)."""


def lg_data(episodes: int, steps: int, seed: int):
    """Trajectories of dvae/LinearGaussian-v0 as a SequenceData, and the env's true parameters (the
    comparison study's exact section collects them the same way)."""
    from studies.compare.exact import collect_data

    return collect_data(episodes, steps, seed)


def exact_nll_per_step(data, params, split: str = "test") -> float:
    """-sum of the exact log p(x | u) of a split's sequences / their steps (data units, Kalman filter)."""
    from studies.compare.exact import exact_per_step

    return -exact_per_step(data, params, split)


def _data(spec: dict):
    """(data, normalizer, exact NLL per step or None) of a run's data set."""
    from dvae.data import Normalizer

    if spec["dataset"] == "lg":
        data, params = lg_data(spec["lg_episodes"], spec["lg_steps"], spec["seed"])
        train_xs, train_us = data.subset("train")
        normalizer = Normalizer.fit(train_xs, train_us, standardize=True)
        return data, normalizer, exact_nll_per_step(data, params)
    data, normalizer = _load(spec["path"])
    return data, normalizer, None


def run_one(spec: dict) -> dict:
    """One run: a family's defaults on a data set under a CPU budget (in a worker process)."""
    import dataclasses

    import pyro

    from dvae.fitting import prepare as _prepare, train_configs, train_options
    from dvae.flags import options_from_flags
    from dvae.infer.trainer import Trainer
    from dvae.models import build_model

    torch.set_num_threads(1)
    flush = torch.set_flush_denormal(True)  # as dvae train does on CPU
    data, normalizer, exact = _data(spec)
    options = {"model": spec["family"], "seed": spec["seed"], "objective": spec["objective"],
               "train_samples": spec["train_samples"], **options_from_flags(spec["flags"])}  # dvae train's settings
    args = train_options(data=spec.get("path") or "lg", **options)
    model_config, train_config = train_configs(args, data)
    train_config = dataclasses.replace(train_config, epochs=None, time_limit=None, device="cpu")  # the CPU budget ends it
    pyro.set_rng_seed(train_config.seed)
    model = build_model(model_config)
    trainer = Trainer(model, train_config, _prepare(data, normalizer, "train"), _prepare(data, normalizer, "valid"),
                      normalizer.log_det_per_step, torch.device("cpu"), x_log_std=normalizer.log_std)
    test = data.subset("test")
    curve = []
    last_test = [-math.inf]

    def record(out):  # each epoch's validation (and every test_every CPU seconds the test bound), the clock paused
        point = {"cpu_seconds": run.clock.used, "updates": run.updates, "epoch": trainer.state["epoch"],
                 "lr": trainer.lr, "valid_neg_elbo_per_step": _finite(out["neg_elbo_per_step"])}
        if run.clock.used - last_test[0] >= spec["test_every"]:
            last_test[0] = run.clock.used
            point["test_neg_elbo_per_step"] = _bounds(model, test, normalizer, 0, spec["seed"] + 2)["neg_elbo_per_step"]
            if spec.get("verbose"):  # the curve in the log as it grows (a long run stopped early keeps it)
                print(f"  {spec['dataset']} {spec['family']} {spec['objective']} epoch {point['epoch']} "
                      f"cpu {point['cpu_seconds']:.1f} lr {point['lr']:.3g} valid {point['valid_neg_elbo_per_step']:.4f} "
                      f"test {point['test_neg_elbo_per_step']:.4f}", flush=True)
        curve.append(point)

    # the latent diagnostics are skipped (drawn under their own random stream: they do not change training);
    # no extra validation of a part-epoch at the budget
    run = CpuBudget(trainer, spec["budget"], on_validate=record, keep_last=False)
    run.fit()
    result = {k: spec[k] for k in ("dataset", "family", "objective", "train_samples", "flags", "budget", "seed")}
    result.update(train_cpu_seconds=run.clock.used, train_wall_seconds=run.wall_seconds, updates=run.updates,
                  epochs=trainer.state["epoch"], stopped_by="budget" if trainer.stopped else trainer.state["stop_reason"],
                  best_epoch=trainer.state["best_epoch"], lr_reductions=trainer.state["lr_reductions"],
                  final_lr=trainer.lr, best_valid_neg_elbo_per_step=_finite(trainer.state["best_valid"]), curve=curve,
                  model_config=dataclasses.asdict(model_config), train_config=dataclasses.asdict(train_config))
    if trainer.best_model is not None:
        model.load_state_dict(trainer.best_model)
        iw = spec["iw_samples"] if spec["dataset"] == "lg" else 0
        result["test_best"] = _bounds(model, test, normalizer, iw, spec["seed"] + 2)
    if exact is not None:
        result["exact_nll_per_step"] = exact
        if "test_best" in result:
            result["elbo_gap_to_exact"] = result["test_best"]["neg_elbo_per_step"] - exact
            if "nll_iw_per_step" in result["test_best"]:
                result["iw_gap_to_exact"] = result["test_best"]["nll_iw_per_step"] - exact
    if flush:
        torch.set_flush_denormal(False)
    return result


def _worker(spec, queue):
    try:
        queue.put(run_one(spec))
    except BaseException:  # report, do not hang the parent
        queue.put({"error": traceback.format_exc(), **{k: spec[k] for k in ("dataset", "family", "objective")}})


def run_all(specs, jobs: int, log=print, on_result=None) -> list:
    """Every spec in its own forked process, ``jobs`` at a time; results in the specs' order (None
    while not done); ``on_result(results)`` after each run ends (the JSON written as runs finish)."""
    ctx = mp.get_context("fork")
    results, pending = [None] * len(specs), list(enumerate(specs))
    running = []
    while pending or running:
        while pending and len(running) < jobs:
            i, spec = pending.pop(0)
            queue = ctx.Queue()
            proc = ctx.Process(target=_worker, args=(spec, queue))
            proc.start()
            running.append((i, spec, proc, queue))
        i, spec, proc, queue = running.pop(0)
        results[i] = queue.get()
        proc.join()
        r = results[i]
        if "error" in r:
            log(f"{spec['dataset']} {spec['family']} {spec['objective']}: FAILED\n{r['error']}")
        else:
            best = r.get("test_best", {})
            log(f"{spec['dataset']:>10} {spec['family']:>5} {spec['objective']:>4} K={spec['train_samples']}: "
                f"{r['epochs']} epochs, {r['train_cpu_seconds']:.1f} CPU s ({r['stopped_by']}), test -ELBO "
                f"{best.get('neg_elbo_per_step', float('nan')):.3f}"
                + (f", IW {best['nll_iw_per_step']:.3f}" if "nll_iw_per_step" in best else "")
                + (f", exact {r['exact_nll_per_step']:.3f}" if "exact_nll_per_step" in r else ""))
        if on_result is not None:
            on_result(results)
    return results


def plot(report: dict, path: str) -> None:
    """Test -ELBO per step against training CPU seconds: a panel per data set, a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in report["runs"] if "error" not in r})
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(6 * max(1, len(datasets)), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        runs = [r for r in report["runs"] if r.get("dataset") == dataset and "error" not in r]
        values = []
        for r in runs:
            pts = [p for p in r["curve"] if "test_neg_elbo_per_step" in p and math.isfinite(p["test_neg_elbo_per_step"])]
            if not pts:
                continue
            label = r["family"] + ("" if r["objective"] == "elbo" else f" {r['objective']} K={r['train_samples']}")
            ax.plot([p["cpu_seconds"] for p in pts], [p["test_neg_elbo_per_step"] for p in pts], label=label,
                    linestyle="-" if r["objective"] == "elbo" else "--")
            values += [p["test_neg_elbo_per_step"] for p in pts]
        exact = next((r["exact_nll_per_step"] for r in runs if "exact_nll_per_step" in r), None)
        if exact is not None:
            ax.axhline(exact, color="black", linewidth=0.8, linestyle=":", label="exact NLL (Kalman)")
            values.append(exact)
        if values:  # the start of a run is far above the rest: show the interesting range
            lo = min(values)
            ax.set_ylim(lo - 0.05 * abs(lo) - 0.05, sorted(values)[int(0.9 * (len(values) - 1))] + 0.1 * abs(lo) + 0.1)
        ax.set_title(f"{dataset}: test -ELBO per step (the parameters of the moment)")
        ax.set_xlabel("training CPU seconds (one thread)")
        ax.set_ylabel("nats per step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    from dvae.files import save_figure
    save_figure(fig, path, dpi=110)
    plt.close(fig)



def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--polyphonic-dir", default=None, help="folder holding Nottingham.pickle (omit: lg only)")
    ap.add_argument("--datasets", nargs="+", choices=["nottingham", "lg"], default=None,
                    help="default: lg, and nottingham with --polyphonic-dir")
    ap.add_argument("--families", nargs="+", choices=FAMILIES, default=["dmm", "vrnn", "vrae", "vae", "lgssm"],
                    help="families to run (default: dmm vrnn vrae vae lgssm)")
    ap.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=["elbo"],
                    help="objectives run for every family (iwae is skipped for lgssm, whose bound is exact)")
    ap.add_argument("--train-samples", type=int, default=8, help="K of the iwae objective (default 8)")
    ap.add_argument("--budget", type=float, default=1800.0, help="training CPU seconds per run (default 1800)")
    ap.add_argument("--test-every", type=float, default=0.0,
                    help="CPU seconds between test evaluations during training (default 0: every epoch)")
    ap.add_argument("--iw-samples", type=int, default=64, help="lg: K of the final IW bound (default 64)")
    ap.add_argument("--lg-episodes", type=int, default=300, help="lg: sequences (default 300)")
    ap.add_argument("--lg-steps", type=int, default=50, help="lg: actions per sequence (default 50)")
    ap.add_argument("--flags", default="", help="extra dvae train flags for every run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    ap.add_argument("--verbose", action="store_true", help="print every test point of the curves as it is taken")
    ap.add_argument("--quick", action="store_true", help="tiny data and budgets: under a minute")
    ap.add_argument("--out", default=None, help="JSON (default bench/results/convergence[-quick].json)")
    ap.add_argument("--figure", default=None, help="PNG of the curves (default: the JSON's name, .png)")
    ap.add_argument("--plot-from", default=None, metavar="JSON", help="only redraw the figure of a written JSON")
    a = ap.parse_args(argv)
    if a.plot_from:
        with open(a.plot_from) as f:
            plot(json.load(f), a.figure or os.path.splitext(a.plot_from)[0] + ".png")
        return 0
    if a.quick:
        a.budget = min(a.budget, 2.0)
        a.lg_episodes, a.lg_steps, a.iw_samples = min(a.lg_episodes, 40), min(a.lg_steps, 20), min(a.iw_samples, 8)
        a.flags = a.flags or "--z-dim 4 --rnn-dim 16 --transition-dim 16 --emission-dim 16"
    datasets = a.datasets or (["nottingham", "lg"] if a.polyphonic_dir else ["lg"])
    path = None
    if "nottingham" in datasets:
        if not a.polyphonic_dir:
            ap.error("--datasets nottingham needs --polyphonic-dir")
        path = os.path.join(a.polyphonic_dir, "Nottingham.pickle")
        if not os.path.isfile(path):
            ap.error(f"{path}: no such file")
    if a.budget <= 0 or a.train_samples < 1 or a.jobs < 1:
        ap.error("--budget must be positive, --train-samples and --jobs at least 1")
    specs = [{"dataset": d, "path": path if d == "nottingham" else None, "family": f, "objective": o,
              "train_samples": a.train_samples if o == "iwae" else 1, "flags": a.flags, "budget": a.budget,
              "seed": a.seed, "test_every": a.test_every, "iw_samples": a.iw_samples, "lg_episodes": a.lg_episodes,
              "lg_steps": a.lg_steps, "verbose": a.verbose}
             for d in datasets for f in a.families for o in a.objectives
             if not (o == "iwae" and f == "lgssm") and not (d == "nottingham" and f == "lgssm")]  # lgssm: Gaussian data only
    out = a.out or os.path.join(ROOT, "bench", "results", "convergence-quick.json" if a.quick else "convergence.json")
    t0 = time.perf_counter()
    machine = {**machine_info(1, "cpu"), "load_average_at_start": list(os.getloadavg())}
    command = " ".join(["python", "bench/bench_convergence.py"] + (sys.argv[1:] if argv is None else argv))

    def write(results):
        report = {"command": command, "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
                  "wall_seconds": time.perf_counter() - t0, "budget_cpu_seconds": a.budget, "goals": GOALS,
                  "runs": [r for r in results if r is not None], "runs_planned": len(specs)}
        from dvae.files import write_json
        write_json(out, report)
        return report

    runs = run_all(specs, a.jobs, log=lambda s: print(s, flush=True), on_result=write)
    report = write(runs)
    plot(report, a.figure or os.path.splitext(out)[0] + ".png")
    failed = [r for r in runs if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
