#!/usr/bin/env python
"""Data to controller with the defaults: collect Pendulum-v1, ``dvae train``, ``dvae plan`` (issue 18's goal).

    python bench/bench_plan.py                 # 20,000 steps, 300 training seconds, plan with defaults, 5 episodes
    python bench/bench_plan.py --quick         # tiny sizes: seconds (tests/bench runs it)

The three commands, each in its own process with one torch thread:

1. ``dvae collect --env Pendulum-v1 --episodes 100 --steps 200 --policy ou --seed S --out WORK/data.npz``
   (``--episodes``, ``--steps``, ``--policy``: 20,000 transitions under smooth random torques);
2. ``dvae train --data WORK/data.npz --time-limit 300 --out WORK/run`` with every other flag at its
   default (``--train-flags`` adds some). ``--clock cpu`` (the default) counts the time limit in CPU
   seconds of the training process (``Trainer.clock`` = ``time.process_time``), so that the figure does
   not depend on how busy the machine is; one thread on a quiet machine makes the two the same. ``--clock
   wall``: the command exactly as a user runs it;
3. ``dvae plan WORK/run --env Pendulum-v1 --episodes 5`` with every other flag at its default
   (``--plan-flags`` adds some): its ``normalized_return`` = (R_model - R_random) / (R_true - R_random).

Writes JSON to ``--out`` (default bench/results/plan.json; plan-quick.json with ``--quick``): the
commands, each one's wall and CPU seconds, the training run's epochs, stop reason and best validation
bound, and the planner's returns with its baselines. ``--run-dir`` plans with an existing run instead
(steps 1-2 skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

GOAL = 0.8
"""Issue 18: normalised return at least 0.8 over five evaluation episodes."""

_CPU_CLOCK_TRAIN = (
    "import sys, time; from dvae.infer.trainer import Trainer; Trainer.clock = staticmethod(time.process_time); "
    "from dvae.cli import main; sys.exit(main(sys.argv[1:]))")
"""``dvae train`` with the trainer's clock (its time limit and epoch seconds) on the process's CPU time."""


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_verb(argv: list, clock: str = "wall") -> dict:
    """``dvae ARGV`` in a child process with one thread; its JSON output, wall and CPU seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = _CPU_CLOCK_TRAIN if clock == "cpu" else "import sys; from dvae.cli import main; sys.exit(main(sys.argv[1:]))"
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"dvae {shlex.join(argv)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return {"command": "dvae " + shlex.join(argv), "wall_seconds": wall, "cpu_seconds": cpu,
            "output": json.loads(lines[-1]) if lines else None}


def _training_record(run_dir: str) -> dict:
    """Epochs, stop reason, best validation bound and the rate schedule of a run directory's metrics."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(ln) for ln in f if ln.strip()]
    valid = [r["valid_neg_elbo_per_step"] for r in rows]
    best = min(range(len(rows)), key=lambda i: valid[i]) if rows else None
    return {"epochs": len(rows), "best_epoch": None if best is None else rows[best]["epoch"],
            "best_valid_neg_elbo_per_step": None if best is None else valid[best],
            "final_lr": rows[-1].get("lr") if rows else None,
            "train_seconds": sum(r.get("epoch_seconds", 0.0) for r in rows)}



def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=100, help="collected episodes (default 100)")
    ap.add_argument("--steps", type=int, default=200, help="actions per collected episode (default 200)")
    ap.add_argument("--policy", choices=["random", "ou"], default="ou", help="collection policy (default ou)")
    ap.add_argument("--time-limit", type=float, default=300.0, help="dvae train --time-limit (default 300)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="what the time limit counts: the training process's CPU seconds (default) or wall seconds")
    ap.add_argument("--train-flags", default="", help="extra dvae train flags")
    ap.add_argument("--plan-episodes", type=int, default=5, help="dvae plan --episodes (default 5)")
    ap.add_argument("--plan-flags", default="", help="extra dvae plan flags")
    ap.add_argument("--seed", type=int, default=0, help="collection and training seed (default 0)")
    ap.add_argument("--run-dir", default=None, help="plan with this run (skip collection and training)")
    ap.add_argument("--work", default=None, help="folder for the data and the run (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: seconds")
    ap.add_argument("--out", default=None, help="JSON (default bench/results/plan[-quick].json)")
    a = ap.parse_args(argv)
    if a.quick:
        a.episodes, a.steps = min(a.episodes, 10), min(a.steps, 20)
        a.time_limit, a.plan_episodes = min(a.time_limit, 2.0), 1
        a.train_flags = a.train_flags or "--z-dim 2 --rnn-dim 8 --transition-dim 8 --emission-dim 8 --no-plots"
        a.plan_flags = a.plan_flags or "--max-steps 4 --num-samples 8 --iterations 1 --horizon 3 --history 4"
    out = a.out or os.path.join(ROOT, "bench", "results", "plan-quick.json" if a.quick else "plan.json")
    command = " ".join(["python", "bench/bench_plan.py"] + (sys.argv[1:] if argv is None else argv))
    report = {"command": command, "goal": GOAL, "load_average_at_start": list(os.getloadavg()), "steps": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or tmp
        os.makedirs(work, exist_ok=True)
        run_dir = a.run_dir
        if run_dir is None:
            data = os.path.join(work, "data.npz")
            run_dir = os.path.join(work, "run")
            report["steps"]["collect"] = run_verb(["collect", "--env", "Pendulum-v1", "--episodes", str(a.episodes),
                                                   "--steps", str(a.steps), "--policy", a.policy, "--seed", str(a.seed),
                                                   "--out", data])
            print(f"collected {report['steps']['collect']['output']['num_transitions']} transitions", flush=True)
            train = run_verb(["train", "--data", data, "--time-limit", f"{a.time_limit:g}", "--seed", str(a.seed),
                              "--no-progress", "--out", run_dir, *shlex.split(a.train_flags)], clock=a.clock)
            train["clock"] = a.clock
            train["output"] = {k: v for k, v in (train["output"] or {}).items() if k != "plots"}
            train["metrics"] = _training_record(run_dir)
            report["steps"]["train"] = train
            m = train["metrics"]
            print(f"trained {m['epochs']} epochs ({train['cpu_seconds']:.0f} CPU s, "
                  f"{train['wall_seconds']:.0f} wall s), best valid -ELBO {m['best_valid_neg_elbo_per_step']:.3f} "
                  f"at epoch {m['best_epoch']}", flush=True)
        plan = run_verb(["plan", run_dir, "--env", "Pendulum-v1", "--episodes", str(a.plan_episodes),
                         *shlex.split(a.plan_flags)])
        report["steps"]["plan"] = plan
        o = plan["output"]
        report["normalized_return"] = o.get("normalized_return")
        report["load_average_at_end"] = list(os.getloadavg())
        from dvae.files import write_json
        write_json(out, report)
        print(f"plan: model {o['mean_return']:.1f}, random {o['baselines']['random']['mean_return']:.1f}, true "
              f"{o['baselines'].get('true_model', {}).get('mean_return', float('nan')):.1f}: normalised return "
              f"{report['normalized_return']:.3f} (goal {GOAL})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
