#!/usr/bin/env python
"""Imagined steps per second of the batched world model against real environment steps per second.

    python bench/bench_world_model.py                    # untrained models at the default sizes
    python bench/bench_world_model.py --run runs/default # a trained run instead (its family and sizes)
    python bench/bench_world_model.py --quick            # tiny counts, seconds: a smoke test

In one process, on one device, it times:

- the real environment (default Pendulum-v1): ``gym.make`` stepped alone (random actions), and
  ``gym.make_vec(..., vectorization_mode="sync")`` with ``--vec-envs`` copies (steps counted per copy);
- the world model (:class:`dvae.world_model.WorldModel`, sampled observations) of each family
  (DMM, VRNN, VRAE, LGSSM at ``dvae train``'s default sizes, or the trained ``--run``) at batch 1,
  64 and 1024: ``reset_prior(N)`` then ``--steps`` calls of ``step(u)``, each advancing N imagined
  rollouts by one step; imagined steps per second = N * steps / seconds.

Weights do not change the cost of a step, so untrained models time what trained ones would. Each
figure is the median of ``--repeats`` timings, after one untimed warm-up. Ratios are imagined steps
per second over the real single env's and over the vectorised env's, measured in the same run.
Writes a table to stdout and JSON to ``--out`` (default bench/results/world_model.json;
bench/results/world_model-quick.json with ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import envs  # noqa: E402,F401  (registers the dvae/ envs)
from dvae.data.normalize import Normalizer  # noqa: E402
from dvae.device import resolve_device  # noqa: E402
from dvae.models import ModelConfig, build_model  # noqa: E402
from dvae.world_model import WorldModel  # noqa: E402

BATCHES = (1, 64, 1024)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def real_env_rates(env_id: str, steps: int, vec_envs: int, repeats: int, seed: int) -> dict:
    env = gym.make(env_id)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(steps)]

    def single():
        for a in actions:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()

    venv = gym.make_vec(env_id, num_envs=vec_envs, vectorization_mode="sync")
    venv.reset(seed=seed)
    venv.action_space.seed(seed)
    vec_actions = [venv.action_space.sample() for _ in range(steps)]

    def vectorised():
        for a in vec_actions:
            venv.step(a)  # autoreset inside

    out = {"single": steps / median_time(single, repeats),
           "vectorised": vec_envs * steps / median_time(vectorised, repeats)}
    env.close()
    venv.close()
    return out


def build_world_model(family: str, run_dir, x_dim: int, u_dim: int, device):
    if run_dir:
        from dvae.run import load_model, read_config
        model, _ = load_model(run_dir, device=device)
        return WorldModel(model, read_config(run_dir).normalizer), model.config.model
    torch.manual_seed(0)
    model = build_model(ModelConfig(model=family, x_dim=x_dim, u_dim=u_dim)).to(device)
    norm = Normalizer([0.0] * x_dim, [1.0] * x_dim, [0.0] * u_dim, [1.0] * u_dim)
    return WorldModel(model, norm), family


def imagined_rate(wm: WorldModel, n: int, steps: int, u_dim: int, repeats: int, device) -> float:
    u = torch.zeros(n, u_dim, device=device)  # (N, u_dim)

    def rollout():
        wm.reset_prior(n)
        for _ in range(steps):
            wm.step(u)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return n * steps / median_time(rollout, repeats)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--run", default=None, help="a trained run directory (default: untrained models of each family)")
    p.add_argument("--families", default="dmm,vrnn,vrae,lgssm")
    p.add_argument("--steps", type=int, default=200, help="steps per timing")
    p.add_argument("--vec-envs", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.vec_envs = 5, 1, 4
    out = args.out or os.path.join(ROOT, "bench", "results", "world_model-quick.json" if args.quick else "world_model.json")
    device = resolve_device(args.device)
    torch.manual_seed(0)

    probe = gym.make(args.env)
    x_dim = int(np.prod(probe.observation_space.shape))
    u_dim = int(np.prod(probe.action_space.shape))
    probe.close()

    real = real_env_rates(args.env, args.steps, args.vec_envs, args.repeats, seed=0)
    rows = []
    families = [None] if args.run else args.families.split(",")
    for family in families:
        wm, name = build_world_model(family, args.run, x_dim, u_dim, device)
        for n in BATCHES:
            rate = imagined_rate(wm, n, args.steps, u_dim, args.repeats, device)
            rows.append({"model": name, "batch": n, "imagined_steps_per_s": rate,
                         "ratio_to_single_env": rate / real["single"],
                         "ratio_to_vectorised_env": rate / real["vectorised"]})

    print(f"{args.env}: real env {real['single']:,.0f} steps/s single, "
          f"{real['vectorised']:,.0f} steps/s vectorised ({args.vec_envs} envs, sync)")
    print(f"{'model':<7}{'batch':>7}{'imagined steps/s':>19}{'/ single':>11}{'/ vectorised':>14}")
    for r in rows:
        print(f"{r['model']:<7}{r['batch']:>7}{r['imagined_steps_per_s']:>19,.0f}"
              f"{r['ratio_to_single_env']:>11.2f}{r['ratio_to_vectorised_env']:>14.2f}")
    result = {
        "env": args.env, "device": str(device), "steps": args.steps, "repeats": args.repeats,
        "vec_envs": args.vec_envs, "run": args.run,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "real_env_steps_per_s": real, "world_model": rows,
    }
    from dvae.files import write_json

    write_json(out, result, indent=2)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
