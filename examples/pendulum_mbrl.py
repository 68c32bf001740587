#!/usr/bin/env python
"""Model-based control of Pendulum-v1 swing-up with a learned world model, data gathered on policy.

    python examples/pendulum_mbrl.py --out runs/mbrl            # the full run (about 20 minutes on 2 cores)
    python examples/pendulum_mbrl.py --quick --out /tmp/mbrl    # tiny sizes: a smoke test

Everything goes through the Python API (``dvae.fit``, ``Run.plan``; each the same as a ``dvae`` verb):

1. ``envs.collect``: ``--init-episodes`` episodes of Pendulum-v1 under smooth random (OU) torques;
2. ``dvae.fit`` a DMM on them (``dvae train``), each run written as a run directory;
3. ``--rounds`` times: ``run.plan(..., save_episodes=...)`` (``dvae plan --save-episodes``) runs the CEM
   planner on the learned model in the real env for ``--episodes-per-round`` episodes and keeps them; a
   fresh model is fitted on all the data so far (random and planned episodes);
4. ``run.plan`` the last model over ``--eval-episodes`` new episodes (other reset seeds) with the
   random and true-simulator baselines: ``normalized_return`` = (R_model - R_random) / (R_true - R_random).

Random exploration alone rarely reaches the upright states that swing-up needs; the planner's own
episodes show the model those states (the data-aggregation loop of PETS / PlaNet style model-based RL).
Writes ``OUT/summary.json``: the environment steps used, each round's planner returns, and the final
figures; prints it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import dvae  # noqa: E402
from dvae.files import write_json  # noqa: E402
from envs import collect, save_npz  # noqa: E402


def merge(paths, out) -> int:
    """Concatenate trajectory files (padding to the longest episode); returns the number of env steps."""
    files = [np.load(p) for p in paths]
    T = max(f["actions"].shape[1] for f in files)

    def pad(a, length, axis=1, edge=False):
        extra = length - a.shape[axis]
        if extra == 0:
            return a
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, extra)
        return np.pad(a, widths, mode="edge" if edge else "constant")

    merged = {
        "obs": np.concatenate([pad(f["obs"], T + 1, edge=True) for f in files]),
        "actions": np.concatenate([pad(f["actions"], T) for f in files]),
        "lengths": np.concatenate([f["lengths"] for f in files]),
        "env_id": files[0]["env_id"],
        "action_low": files[0]["action_low"], "action_high": files[0]["action_high"],
    }
    save_npz(out, merged)
    return int(merged["lengths"].sum())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/mbrl")
    p.add_argument("--init-episodes", type=int, default=100)
    p.add_argument("--init-steps", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--episodes-per-round", type=int, default=5)
    p.add_argument("--train-seconds", type=float, default=240)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--num-samples", type=int, default=200, help="planner candidates")
    p.add_argument("--iterations", type=int, default=3, help="planner refinements")
    p.add_argument("--horizon", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.init_episodes, a.init_steps, a.rounds, a.episodes_per_round = 6, 12, 1, 1
        a.train_seconds, a.epochs, a.eval_episodes, a.num_samples, a.iterations, a.horizon = 20, 1, 1, 10, 1, 3
    max_steps = 10 if a.quick else 200
    small = dict(z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8) if a.quick else {}
    os.makedirs(a.out, exist_ok=True)
    t0 = time.perf_counter()
    plan = dict(planner="cem", horizon=a.horizon, num_samples=a.num_samples, iterations=a.iterations,
                max_steps=max_steps)

    def train(data, name):  # dvae train --data DATA --out OUT/NAME ...
        return dvae.fit(data, epochs=a.epochs, time_limit=a.train_seconds, patience=30, seed=a.seed,
                        no_progress=True, out=os.path.join(a.out, name), **small)

    data = [os.path.join(a.out, "random.npz")]
    save_npz(data[0], collect("Pendulum-v1", a.init_episodes, a.init_steps, policy="ou", seed=a.seed))
    steps = merge(data, os.path.join(a.out, "data-0.npz"))
    model = train(os.path.join(a.out, "data-0.npz"), "model-0")
    rounds = [{"round": 0, "env_steps": steps, "train": model.summary}]
    for r in range(1, a.rounds + 1):
        ep_file = os.path.join(a.out, f"planned-{r}.npz")
        planned = model.plan("Pendulum-v1", **plan, episodes=a.episodes_per_round, seed=1000 * r + a.seed,
                             baselines=False, save_episodes=ep_file)
        data.append(ep_file)
        steps = merge(data, os.path.join(a.out, f"data-{r}.npz"))
        model = train(os.path.join(a.out, f"data-{r}.npz"), f"model-{r}")
        rounds.append({"round": r, "planner_returns": planned["returns"], "env_steps": steps, "train": model.summary})
    final = model.plan("Pendulum-v1", **plan, episodes=a.eval_episodes, seed=100 + a.seed)
    summary = {
        "env_steps_for_training": steps, "rounds": rounds,
        "final": {k: final[k] for k in ("mean_return", "returns", "baselines", "normalized_return") if k in final},
        "seconds": time.perf_counter() - t0,
        "command": "python examples/pendulum_mbrl.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    write_json(os.path.join(a.out, "summary.json"), summary, indent=2)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
