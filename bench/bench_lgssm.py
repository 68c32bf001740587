#!/usr/bin/env python
"""The LGSSM's training update: its per-step program (the Kalman filter step by step, a site per step)
against its time-vectorized program (one site scored by ``pyro.distributions.GaussianHMM``).

    python bench/bench_lgssm.py            # the grid below, about a minute on one CPU thread
    python bench/bench_lgssm.py --quick    # tiny sizes, seconds: a smoke test of this script

For each size (batch B, steps T, z_dim, x_dim, u_dim) it times one update's loss and gradients
(``DynamicalELBO.loss_and_grads``, no optimizer step) of both programs on the same batch and
parameters, interleaved (a, b, a, b, ...) after a warm-up, and reports the medians, their ratio and the
largest difference of the two losses (float32; the float64 equality is a test,
tests/models/test_lgssm.py). Writes a table to stdout and JSON to ``--out`` (default
bench/results/lgssm.json; bench/results/lgssm-quick.json with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyro  # noqa: E402

from dvae.data import collate  # noqa: E402
from dvae.infer.elbo import DynamicalELBO  # noqa: E402
from dvae.models import ModelConfig, build_model  # noqa: E402
from dvae.run import atomic_write_text  # noqa: E402

GRID = [(16, 50, 4, 2, 1), (16, 200, 4, 2, 1), (16, 50, 16, 4, 2), (16, 200, 16, 4, 2), (64, 200, 16, 4, 2)]
QUICK = [(4, 10, 2, 2, 1)]


def one(B: int, T: int, z: int, x: int, u: int, rounds: int, warmup: int) -> dict:
    torch.manual_seed(0)
    pyro.clear_param_store()
    model = build_model(ModelConfig("lgssm", x_dim=x, u_dim=u, z_dim=z))
    batch = collate([torch.randn(T, x) for _ in range(B)], [torch.randn(T, u) for _ in range(B)])
    elbo = DynamicalELBO()
    programs = {"per_step": model.programs(vectorized=False), "vectorized": model.programs(vectorized=True)}
    times = {k: [] for k in programs}
    losses = {}
    for r in range(warmup + rounds):
        for k, (m, g) in programs.items():
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            losses[k] = float(elbo.loss_and_grads(m, g, batch))
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    a, b = statistics.median(times["per_step"]), statistics.median(times["vectorized"])
    return {"B": B, "T": T, "z_dim": z, "x_dim": x, "u_dim": u, "per_step_ms": 1e3 * a, "vectorized_ms": 1e3 * b,
            "speedup": a / b, "loss_difference": abs(losses["per_step"] - losses["vectorized"]),
            "loss": losses["per_step"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=0, help="timed updates per program (default 15; 3 with --quick)")
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    rounds = a.rounds or (3 if a.quick else 15)
    rows = [one(*size, rounds=rounds, warmup=1 if a.quick else 3) for size in (QUICK if a.quick else GRID)]
    print(f"{'B':>4} {'T':>4} {'z':>3} {'x':>3} {'u':>3} {'per-step ms':>12} {'GaussianHMM ms':>15} {'speedup':>8}"
          f" {'|loss diff|':>12}")
    for r in rows:
        print(f"{r['B']:>4} {r['T']:>4} {r['z_dim']:>3} {r['x_dim']:>3} {r['u_dim']:>3} {r['per_step_ms']:>12.1f}"
              f" {r['vectorized_ms']:>15.1f} {r['speedup']:>8.1f} {r['loss_difference']:>12.2e}")
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                "lgssm-quick.json" if a.quick else "lgssm.json")
    info = {"torch": torch.__version__, "pyro": pyro.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "rounds": rounds, "rows": rows}
    atomic_write_text(out, json.dumps(info, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
