#!/usr/bin/env python
"""How a training update's cost grows with the sequence length T, per family: it should be linear.

    python bench/bench_length.py [--families kvae,dmm] [--steps 250] [--factor 4] [--batch 20]
                                 [--x-dim 88] [--likelihood bernoulli] [--threads 1]
                                 [--out bench/results/length.json]

For each family, one update of the vectorized ELBO (forward and backward, the trainer's objective)
on a batch of B binary rolls of T steps (88 keys, as the polyphonic data; ``--likelihood gaussian``:
standard normal frames, which the lgssm needs), then of ``factor`` T steps,
both in this process, timed by the process's CPU clock (median of ``--repeats``). It prints and writes
the CPU seconds per step of each and their ratio: about 1 where the update is linear in T; a ratio
near ``factor`` means the update is quadratic in T (a per-step ``h[:, t]`` on a whole path in the
backward graph: tests/models/test_long_sequences.py). MuseData's longest roll has 4273 steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from dvae.data.batch import SequenceBatch  # noqa: E402
from dvae.infer.objectives import make_objective  # noqa: E402
from dvae.models import MODELS, ModelConfig, build_model  # noqa: E402


def update_cpu_s(family: str, B: int, T: int, x_dim: int, repeats: int, likelihood: str = "bernoulli") -> float:
    """Median CPU seconds of one forward and backward pass of the ELBO on a (B, T, x_dim) batch."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(model=family, x_dim=x_dim, z_dim=16, likelihood=likelihood))
    if likelihood == "bernoulli":
        x = (torch.rand(B, T, x_dim) < 0.1).float()  # (B, T, x_dim): sparse binary rolls
    else:
        x = torch.randn(B, T, x_dim)  # (B, T, x_dim): standard normal frames
    batch = SequenceBatch(x, None, torch.ones(B, T, dtype=torch.bool), torch.full((B,), T))
    program, guide = model.programs(vectorized=True)
    loss_fn = make_objective("elbo")
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.process_time()
        loss_fn.differentiable_loss(program, guide, batch, 1.0).backward()
        times.append(time.process_time() - t0)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", default="kvae", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--steps", type=int, default=250, help="T of the short batch")
    p.add_argument("--factor", type=int, default=4, help="the long batch has factor x T steps")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--x-dim", type=int, default=88)
    p.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "length.json"))
    a = p.parse_args(argv)
    families = [f.strip() for f in a.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in MODELS]
    if unknown:
        p.error(f"--families: unknown {', '.join(unknown)} (choose from {', '.join(MODELS)})")
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    T, T_long = a.steps, a.factor * a.steps
    rows = []
    for family in families:
        try:
            short = update_cpu_s(family, a.batch, T, a.x_dim, a.repeats, a.likelihood)
        except ValueError as e:
            p.error(f"--families {family}: {e}")
        long = update_cpu_s(family, a.batch, T_long, a.x_dim, a.repeats, a.likelihood)
        row = {"family": family, "cpu_s_per_step": {str(T): short / T, str(T_long): long / T_long},
               "update_cpu_s": {str(T): short, str(T_long): long}, "ratio": (long / T_long) / (short / T)}
        rows.append(row)
        print(f"{family:6s} update {short:7.2f} CPU s at T={T}, {long:7.2f} at T={T_long}: per step x{row['ratio']:.2f}",
              flush=True)
    from dvae.files import write_json
    write_json(a.out, {"command": "python bench/bench_length.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                       "batch": a.batch, "x_dim": a.x_dim, "likelihood": a.likelihood, "threads": a.threads, "repeats": a.repeats,
                       "torch": torch.__version__, "families": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
