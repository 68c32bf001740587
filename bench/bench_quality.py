#!/usr/bin/env python
"""Quality per second: the test -ELBO per step after a budget of CPU seconds of training.

    python bench/bench_quality.py                      # 300 CPU s per arm on Nottingham (40 min wall, loaded)
    python bench/bench_quality.py --quick --data F     # seconds: a smoke test (tests/bench runs it)
    python bench/bench_quality.py --sweep --budget 75  # arm (A) under several settings, valid -ELBO at the budget

Two arms, each in its own forked process with one torch thread, run at the same time (so the load of
the machine falls on both alike), each for ``--budget`` seconds of training CPU time, measured with
``time.process_time()`` of its own process; evaluation (validation during training, the final
validation and test bounds) is excluded from the budget: the clock is paused around it.

(A) the project's defaults: what ``dvae train --data PICKLE`` does. The run's configs come from the
    train verb's settings (``dvae.fitting.train_options``, as ``dvae.fit`` takes them) and
    ``dvae.fitting.train_configs``, the splits from ``dvae.fitting.prepare``,
    training from ``Trainer.fit`` (validation every epoch, the best-on-validation parameters, early
    stopping, the epoch limit; denormals flushed as ``dvae train`` does on CPU; the per-epoch latent
    diagnostics, which do not change training, are skipped unless ``--diagnostics``). ``--sweep`` runs it
    under extra train-verb flags (``--variant "--lr 1e-2"``).
(B) the per-step Pyro program with the settings of Pyro's DMM example (examples/dmm.py): z 100,
    transition 200, emission 100, ReLU RNN 600, random minibatches of 20, ClippedAdam (lr 3e-4,
    betas (0.96, 0.999), clip_norm 10, lrd 0.99996, weight_decay 2.0), the loss summed over the
    minibatch (not per step), KL annealing from 0.2 over 1000 epochs, Pyro's ``Trace_ELBO``; on
    the project's DMM (its per-step program), Bernoulli observations. Validated every ``--eval-every``
    CPU seconds; the best-on-validation parameters are kept.

Both arms are scored by the same code: ``dvae.infer.evaluation.evaluate`` (the ELBO with the KL of each
step in closed form given the sampled z_{t-1}, one draw per sequence, seeded; the vectorized form of
the program, which gives the same bound and draws), on the test split with the best-on-validation
parameters (and the final ones), plus the K-sample importance-weighted bound (``--iw-samples``) of the
best-on-validation parameters.

Writes a table to stdout, JSON to ``--out`` (default bench/results/quality.json; quality-quick.json
with --quick, quality-sweep.json with --sweep) and, with ``--figure``, the validation curves against
CPU seconds.
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

# no torch computation in this (parent) process: the workers are forked from it
import pyro  # noqa: E402
import torch  # noqa: E402

from studies.compare.budget import Clock, CpuBudget  # noqa: E402  (one budget for the study and the benches)
from bench.bench_training import machine_info  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "polyphonic", "Nottingham.pickle")  # ../shared
GOAL = 0.65

# Pyro's DMM example, examples/dmm.py (argument defaults and the DMM's constructor defaults)
PYRO_EXAMPLE = dict(z_dim=100, transition_dim=200, emission_dim=100, rnn_dim=600, rnn_type="rnn", batch_size=20,
                    lr=3e-4, beta1=0.96, beta2=0.999, clip_norm=10.0, lr_decay=0.99996, weight_decay=2.0,
                    annealing_epochs=1000, minimum_annealing_factor=0.2, elbo="Trace_ELBO")

# the settings tried by --sweep when no --variant is given (train-verb flags on top of the defaults)
SWEEP = [
    "",
    "--lr 1e-2",
    "--lr 1e-3",
    "--batch-size 8",
    "--batch-size 32",
    "--anneal-epochs 1",
    "--anneal-epochs 0",
    "--guide mean_field",
    "--rnn-dim 128 --emission-dim 128 --transition-dim 128",
    "--z-dim 32",
]


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else float("nan")


def _bounds(model, split, normalizer, iw_samples: int, seed: int, batch_size: int = 64) -> dict:
    """Per-step bounds on a split ``(xs, us)`` (seeded, without touching the training's random stream)."""
    from dvae.infer.evaluation import evaluate

    xs, us = split
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        out = evaluate(model, normalizer.x(xs), normalizer.u(us), normalizer.log_det_per_step, batch_size,
                       iw_samples=iw_samples, x_log_std=normalizer.log_std, vectorized=True)
    return {k: _finite(v) if isinstance(v, float) else v for k, v in out.items()}


def _load(path: str, args=None):
    """The data and its normaliser, as ``dvae train`` reads them (``args``: the train verb's arguments)."""
    from dvae.data import Normalizer
    from dvae.run import DataConfig, RunConfig, load_data

    d = DataConfig(source=path) if args is None else DataConfig(
        source=args.data, episodes=args.episodes, steps=args.steps, data_seed=args.seed, missing=args.missing,
        tokens=args.tokens, min_count=args.min_count)
    data = load_data(RunConfig(data=d))
    train_xs, train_us = data.subset("train")
    normalizer = Normalizer.fit(train_xs, train_us, standardize=data.kind == "continuous")
    return data, normalizer


def _final_eval(result: dict, model, best_state, data, normalizer, spec: dict) -> None:
    """Validation and test bounds of the final and the best-on-validation parameters."""
    t0 = time.perf_counter()
    valid, test = data.subset("valid"), data.subset("test")
    final_state = {k: v.clone() for k, v in model.state_dict().items()}
    result["valid_final"] = _bounds(model, valid, normalizer, 0, spec["seed"] + 1)
    if not spec.get("sweep"):
        result["test_final"] = _bounds(model, test, normalizer, 0, spec["seed"] + 2)
    if not spec.get("sweep"):
        # an arm whose budget ended before its first validation has no best epoch: its best are its final parameters
        result["best_is_final"] = best_state is None
        model.load_state_dict(final_state if best_state is None else best_state)
        result["test_best"] = _bounds(model, test, normalizer, spec["iw_samples"], spec["seed"] + 2)
        model.load_state_dict(final_state)
    result["eval_wall_seconds"] = time.perf_counter() - t0


def train_args(spec: dict):
    """The train verb's settings of arm (A) (``dvae.fitting.train_options``, what ``dvae.fit`` takes): the
    benchmark's ``--seed`` is the run's ``seed`` (as ``dvae train --seed``: training and, for a built-in
    source, the data collection) unless the flags give one."""
    from dvae.fitting import train_options
    from dvae.flags import options_from_flags

    options = {"seed": spec["seed"], **options_from_flags(spec.get("flags", ""))}
    return train_options(model=options.pop("model", "dmm"), data=spec["data"], **options)


def run_defaults(spec: dict) -> dict:
    """Arm (A): ``dvae train --data PATH [flags]`` under a CPU budget, through ``Trainer.fit``."""
    from dvae.fitting import prepare, train_configs
    from dvae.infer.trainer import Trainer
    from dvae.models import build_model

    args = train_args(spec)
    data, normalizer = _load(spec["data"], args)
    model_config, train_config = train_configs(args, data)
    pyro.set_rng_seed(train_config.seed)
    model = build_model(model_config)
    trainer = Trainer(model, train_config, prepare(data, normalizer, "train"), prepare(data, normalizer, "valid"),
                      normalizer.log_det_per_step, torch.device("cpu"), x_log_std=normalizer.log_std)
    curve = []

    def record(out):  # each epoch's validation, the clock paused
        curve.append({"cpu_seconds": run.clock.used, "updates": run.updates, "epoch": trainer.state["epoch"],
                      "valid_neg_elbo_per_step": _finite(out["neg_elbo_per_step"])})

    # the budget's clock paused around validation; the latent diagnostics of every epoch (KL per dimension,
    # active units; drawn under their own random stream, so they leave training as it is) only cost time
    # here: off, unless --diagnostics (then paused too). No extra validation of a part-epoch at the budget.
    run = CpuBudget(trainer, spec["budget"], on_validate=record, keep_last=False,
                    diagnostics=bool(spec.get("diagnostics")))
    result = {"arm": "A", "flags": spec.get("flags", ""), "max_update_cpu_seconds": 0.0,
              "model_config": vars(model_config).copy(), "train_config": vars(train_config).copy()}
    run.fit()
    stop = "budget" if trainer.stopped else ("epochs" if trainer.state.get("stop_reason") == "epochs"
                                               else "early stopping")
    # max_update_cpu_seconds: the most training CPU seconds between two update boundaries (an update and
    # the bookkeeping around it): about the most the budget is overrun by
    result.update(train_cpu_seconds=run.clock.used, train_wall_seconds=run.wall_seconds, updates=run.updates,
                  max_update_cpu_seconds=run.longest_update, epochs=run.epochs,
                  stopped_by=stop, curve=curve, best_epoch=trainer.state["best_epoch"],
                  best_valid_neg_elbo_per_step=_finite(trainer.state["best_valid"]),
                  skipped_updates=trainer.state["skipped_updates"])
    _final_eval(result, model, trainer.best_model, data, normalizer, spec)
    return result


def run_pyro_example(spec: dict) -> dict:
    """Arm (B): the per-step program with the settings of Pyro's DMM example, under a CPU budget."""
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import ClippedAdam

    from dvae.data import collate
    from dvae.models import ModelConfig, build_model

    s = dict(PYRO_EXAMPLE, **spec.get("pyro_overrides", {}))
    data, normalizer = _load(spec["data"])
    train_xs, _ = data.subset("train")
    valid = data.subset("valid")
    pyro.set_rng_seed(spec["seed"])
    pyro.clear_param_store()
    model_config = ModelConfig(model="dmm", x_dim=data.x_dim, z_dim=s["z_dim"], rnn_dim=s["rnn_dim"],
                               rnn_type=s["rnn_type"], transition_dim=s["transition_dim"],
                               emission_dim=s["emission_dim"], likelihood="bernoulli", guide="dks")
    model = build_model(model_config)
    optim = ClippedAdam({"lr": s["lr"], "betas": (s["beta1"], s["beta2"]), "clip_norm": s["clip_norm"],
                         "lrd": s["lr_decay"], "weight_decay": s["weight_decay"]})
    svi = SVI(model.model, model.guide, optim, Trace_ELBO())  # the loss summed over the minibatch
    n, bs = len(train_xs), s["batch_size"]
    per_epoch = math.ceil(n / bs)
    clock, budget, curve = Clock(), spec["budget"], []
    best = {"valid": math.inf, "state": None, "cpu_seconds": None}
    result = {"arm": "B", "settings": s, "model_config": vars(model_config).copy(), "max_update_cpu_seconds": 0.0}
    next_eval, updates, epoch, t0 = spec["eval_every"], 0, 0, time.perf_counter()

    def validate():
        v = _bounds(model, valid, normalizer, 0, spec["seed"] + 1)["neg_elbo_per_step"]
        curve.append({"cpu_seconds": clock.used, "updates": updates, "epoch": updates / per_epoch,
                      "valid_neg_elbo_per_step": v})
        if v < best["valid"]:
            best.update(valid=v, state={k: t.clone() for k, t in model.state_dict().items()}, cpu_seconds=clock.used)

    clock.resume()
    done = False
    while not done:
        perm = torch.randperm(n)
        for which in range(per_epoch):
            if epoch < s["annealing_epochs"]:
                af = s["minimum_annealing_factor"] + (1.0 - s["minimum_annealing_factor"]) * (
                    (which + epoch * per_epoch + 1) / (s["annealing_epochs"] * per_epoch))
            else:
                af = 1.0
            idx = perm[which * bs:(which + 1) * bs].tolist()
            batch = collate([torch.from_numpy(train_xs[i]) for i in idx])  # (B, T_max, 88), random lengths
            t = time.process_time()
            svi.step(batch, af)
            result["max_update_cpu_seconds"] = max(result["max_update_cpu_seconds"], time.process_time() - t)
            updates += 1
            if clock.now() >= budget:
                done = True
                break
            if clock.now() >= next_eval:
                clock.pause()
                validate()
                clock.resume()
                next_eval += spec["eval_every"]
        else:
            epoch += 1
    clock.pause()
    validate()  # the final parameters, at the budget
    result.update(train_cpu_seconds=clock.used, train_wall_seconds=time.perf_counter() - t0, updates=updates,
                  epochs=updates / per_epoch, stopped_by="budget", curve=curve, best_at_cpu_seconds=best["cpu_seconds"],
                  best_valid_neg_elbo_per_step=best["valid"], final_annealing_factor=af)
    _final_eval(result, model, best["state"], data, normalizer, spec)
    return result


ARMS = {"defaults": run_defaults, "pyro_example": run_pyro_example}


def _worker(conn, spec: dict) -> None:
    try:
        torch.set_num_threads(spec["threads"])
        torch.set_flush_denormal(True)  # as dvae train on CPU; in both arms (see docs/performance.md)
        result = ARMS[spec["kind"]](spec)
        result["wall_seconds_total"] = time.perf_counter() - spec["_t0"]
        conn.send(("ok", result))
    except BaseException:  # noqa: BLE001 - report any failure to the parent
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_parallel(specs: list, jobs: int, log) -> list:
    """Run the specs in forked workers, ``jobs`` at a time; results in the order of the specs."""
    ctx = mp.get_context("fork")
    results, pending, running = [None] * len(specs), list(enumerate(specs)), []
    while pending or running:
        while pending and len(running) < jobs:
            i, spec = pending.pop(0)
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker, args=(child, dict(spec, _t0=time.perf_counter())), daemon=True)
            p.start()
            child.close()
            running.append((i, p, parent))
            log(f"started {spec['name']}")
        for entry in list(running):
            i, p, parent = entry
            if parent.poll(0.5):
                status, payload = parent.recv()
                p.join()
                running.remove(entry)
                if status != "ok":
                    raise RuntimeError(f"{specs[i]['name']} failed:\n{payload}")
                results[i] = dict(payload, name=specs[i]["name"])
                log(f"finished {specs[i]['name']}: {payload['updates']} updates in {payload['train_cpu_seconds']:.1f} "
                    f"CPU s, valid -ELBO/step (final) {payload['valid_final']['neg_elbo_per_step']:.3f}")
            elif not p.is_alive():
                raise RuntimeError(f"{specs[i]['name']}: worker died (exit code {p.exitcode})")
    return results


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def compare_table(arms: dict) -> str:
    lines = ["| arm | updates | epochs | train CPU s | best valid -ELBO | test -ELBO (best) | test IW (best) | "
             "test -ELBO (final) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in arms.items():
        tb, tf = r.get("test_best", {}), r.get("test_final", {})
        lines.append(f"| {key} | {r['updates']} | {r['epochs']:.2f} | {r['train_cpu_seconds']:.1f} | "
                     f"{_fmt(r['best_valid_neg_elbo_per_step'])} | {_fmt(tb.get('neg_elbo_per_step'))} | "
                     f"{_fmt(tb.get('nll_iw_per_step'))} | {_fmt(tf.get('neg_elbo_per_step'))} |")
    return "\n".join(lines)


def sweep_table(results: list) -> str:
    lines = ["| flags on top of the defaults | updates | epochs | train CPU s | best valid -ELBO | "
             "valid -ELBO (final) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| `{r['flags'] or '(defaults)'}` | {r['updates']} | {r['epochs']:.2f} | "
                     f"{r['train_cpu_seconds']:.1f} | {_fmt(r['best_valid_neg_elbo_per_step'])} | "
                     f"{_fmt(r['valid_final']['neg_elbo_per_step'])} |")
    return "\n".join(lines)


def grid_table(reports: list) -> str:
    """Sweeps of ``--model M [--lr R]`` variants as one grid: a row per (model, learning rate), a column
    per (data, seed), the best-on-validation -ELBO per step (as ``dvae train`` keeps it)."""
    from dvae.infer.trainer import default_lr

    cells, columns = {}, []
    for rep in reports:
        col = f"{os.path.splitext(os.path.basename(rep['data']))[0]}, seed {rep['seed']}"
        if col not in columns:
            columns.append(col)
        for r in rep["results"]:
            a = train_args({"data": rep["data"], "seed": rep["seed"], "flags": r["flags"]})
            lr = a.lr if a.lr is not None else default_lr(a.model)
            cells[(a.model, lr, col)] = r["best_valid_neg_elbo_per_step"]
    rows = sorted({(m, lr) for m, lr, _ in cells}, key=lambda k: (k[0], k[1]))
    lines = ["| model | lr | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for m, lr in rows:
        vals = [_fmt(cells[(m, lr, c)]) if (m, lr, c) in cells else "" for c in columns]
        lines.append(f"| {m.upper()} | {lr:g}{' (default)' if lr == default_lr(m) else ''} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot_curves(arms: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, r in arms.items():
        xs = [p["cpu_seconds"] for p in r["curve"]]
        ys = [p["valid_neg_elbo_per_step"] for p in r["curve"]]  # nan (a diverged evaluation): a gap
        ax.plot(xs, ys, marker=".", label=key)
    ax.set_yscale("log")  # a diverging arm's bound can reach 1e10 and more
    ax.set_xlabel("training CPU seconds (1 thread)")
    ax.set_ylabel("validation -ELBO per step (nats, log scale)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from dvae.files import save_figure

    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="a polyphonic pickle (default: Nottingham), or any "
                    "train --data source for --sweep (e.g. pendulum)")
    ap.add_argument("--budget", type=float, default=None, help="training CPU seconds per arm (default 300; "
                    "--sweep 75; --quick 2)")
    ap.add_argument("--eval-every", type=float, default=None, help="arm (B): validate every this many training "
                    "CPU seconds (default budget / 5)")
    ap.add_argument("--iw-samples", type=int, default=None, help="K of the test IW bound (default 4; --quick 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per arm")
    ap.add_argument("--seed", type=int, default=0, help="arm (A): `dvae train --seed` (unless --flags or a --variant "
                    "gives one); arm (B): its training seed; both: the evaluation draws")
    ap.add_argument("--quick", action="store_true", help="a 2-CPU-second budget: a smoke test")
    ap.add_argument("--sweep", action="store_true", help="arm (A) only, under each --variant (or the built-in list)")
    ap.add_argument("--variant", action="append", default=None, help="--sweep: train-verb flags, e.g. '--lr 1e-2'")
    ap.add_argument("--flags", default="", help="arm (A): extra train-verb flags (default none: the defaults)")
    ap.add_argument("--jobs", type=int, default=2, help="--sweep: runs at a time")
    ap.add_argument("--diagnostics", action="store_true", help="arm (A): the trainer's latent diagnostics every "
                    "epoch too (wall time only: they are not training time, and do not change training)")
    ap.add_argument("--figure", default=None, help="write the validation curves of the arms to this PNG")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot-from", metavar="JSON", default=None,
                    help="only draw --figure from a results file this script wrote (no training)")
    ap.add_argument("--grid-from", metavar="JSON", nargs="+", default=None,
                    help="only print the sweeps of these results files as one grid of (model, lr) by (data, seed)")
    a = ap.parse_args(argv)
    if a.grid_from:
        reports = []
        for path in a.grid_from:
            with open(path) as f:
                reports.append(json.load(f))
        print(grid_table(reports))
        return 0
    if a.plot_from:
        with open(a.plot_from) as f:
            r = json.load(f)
        names = {"A": "(A) dvae train defaults", "B": "(B) per-step, Pyro example settings"}
        plot_curves({names[k]: v for k, v in r["arms"].items()}, a.figure or "quality_per_second.png",
                    f"{os.path.basename(r['data'])}: {r['budget_cpu_seconds']:.0f} CPU s per arm")
        return 0
    if a.sweep and a.quick:
        budget = a.budget or 2.0
    else:
        budget = a.budget or (2.0 if a.quick else 75.0 if a.sweep else 300.0)
    if budget <= 0:
        ap.error("--budget must be positive")
    if not os.path.exists(a.data) and a.data != "pendulum":
        ap.error(f"--data {a.data}: no such file")
    eval_every = a.eval_every or budget / 5
    iw = a.iw_samples if a.iw_samples is not None else (2 if a.quick else 4)
    name = "quality-sweep" if a.sweep else "quality"
    out = a.out or os.path.join(ROOT, "bench", "results", f"{name}{'-quick' if a.quick else ''}.json")
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    common = dict(data=a.data, budget=budget, eval_every=eval_every, iw_samples=iw, threads=a.threads, seed=a.seed,
                  quick=a.quick, diagnostics=a.diagnostics)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    report = {"machine": machine_info(a.threads, "cpu"), "load_average_start": load_start, "data": a.data,
              "budget_cpu_seconds": budget, "seed": a.seed, "quick": a.quick}
    if a.sweep:
        variants = a.variant if a.variant is not None else SWEEP
        specs = [dict(common, kind="defaults", flags=v, sweep=True, name=v or "(defaults)") for v in variants]
        results = run_parallel(specs, a.jobs, log)
        report.update(kind="sweep", results=results)
        print(sweep_table(results))
    else:
        specs = [dict(common, kind="defaults", flags=a.flags, name="A"),
                 dict(common, kind="pyro_example", name="B")]
        res_a, res_b = run_parallel(specs, 2, log)
        arms = {"(A) dvae train defaults": res_a, "(B) per-step, Pyro example settings": res_b}
        ratio_best = res_a["test_best"]["neg_elbo_per_step"] / res_b["test_best"]["neg_elbo_per_step"]
        ratio_final = res_a["test_final"]["neg_elbo_per_step"] / res_b["test_final"]["neg_elbo_per_step"]
        report.update(kind="compare", arms={"A": res_a, "B": res_b}, goal=GOAL,
                      ratio_test_neg_elbo_best=ratio_best, ratio_test_neg_elbo_final=ratio_final,
                      goal_met=bool(ratio_best <= GOAL))
        print(compare_table(arms))
        print(f"\nA/B test -ELBO per step (best-on-validation parameters): {ratio_best:.3f} "
              f"(final parameters: {ratio_final:.3f}); goal at most {GOAL}: "
              f"{'met' if ratio_best <= GOAL else 'NOT met'}")
        if a.figure:
            plot_curves(arms, a.figure, f"{os.path.basename(a.data)}: {budget:.0f} CPU s per arm")
            report["figure"] = a.figure
    report["wall_seconds"] = time.perf_counter() - t0
    report["load_average_end"] = os.getloadavg()[0]
    from dvae.files import write_json

    write_json(out, report, default=str)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
