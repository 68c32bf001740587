#!/usr/bin/env python
"""Loader memory as the data grows: trajectory shards read lazily, against the in-memory .npz loader.

    python bench/bench_loader.py            # 1x, 2x, 5x, 10x of 2000 episodes x 250 steps (32 MB a 1x)
    python bench/bench_loader.py --quick    # tiny sizes, seconds: a smoke test of this script

For each scale the same synthetic trajectories (obs 12 dims, float actions 4 dims, ragged lengths
125..250 actions) are written twice: as shards of 1000 episodes with a manifest (the layout of
`dvae collect --shards`, read lazily by dvae.data.lazy) and as one .npz (read into memory by
dvae.data.load_npz). Then, in a fresh process per (layout, scale), it runs what `dvae train` does
with its data up to the end of its first epoch: ``load_source``, ``Normalizer.fit`` on the training
split, standardisation, and one epoch of length-bucketed batches of 16 training sequences collated
into tensors (no model: this measures the loader). Reported per run:

- ``peak_mb``: growth of the process's peak resident memory over this work, in MiB (the kernel's
  high-water mark VmHWM, reset to the current resident set just before loading through
  /proc/self/clear_refs; Linux);
- ``seconds``: wall time of that work; ``batches``, ``sequences``: what the epoch read.

The files are in the page cache after being written, so "from disk" here means through the file
system, not from the platters. Writes a table to stdout and JSON to ``--out`` (default
bench/results/loader.json; bench/results/loader-quick.json with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def write_data(directory: str, episodes: int, steps: int, shard_size: int, seed: int = 0) -> dict:
    """Synthetic trajectories, written shard by shard (shards/) and as one .npz (one.npz)."""
    from dvae.data.lazy import write_manifest
    from envs import save_npz

    g = np.random.default_rng(seed)
    shard_dir = os.path.join(directory, "shards")
    os.makedirs(shard_dir)
    parts, entries = [], []
    for k, start in enumerate(range(0, episodes, shard_size)):
        n = min(shard_size, episodes - start)
        lengths = g.integers(steps // 2, steps + 1, n)  # (n,) actions per episode
        obs = np.cumsum(g.standard_normal((n, steps + 1, 12), dtype=np.float32), axis=1)  # (n, T+1, 12)
        actions = g.uniform(-1, 1, (n, steps, 4)).astype(np.float32)  # (n, T, 4)
        part = {"obs": obs, "actions": actions, "lengths": lengths}
        save_npz(os.path.join(shard_dir, f"shard-{k:05d}.npz"), part)
        entries.append({"file": f"shard-{k:05d}.npz", "episodes": n})
        parts.append(part)
    write_manifest(shard_dir, entries)
    one = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    save_npz(os.path.join(directory, "one.npz"), one)
    return {"shards": shard_dir, "npz": os.path.join(directory, "one.npz"),
            "mb": sum(v.nbytes for v in one.values()) / 2 ** 20}


def _status(field: str) -> int:
    """A field of /proc/self/status in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(source: str, batch_size: int) -> dict:
    """What `dvae train` does with its data up to the end of the first epoch; memory and time."""
    import torch

    from dvae.data import Normalizer, load_source
    from dvae.data.batching import batches

    torch.set_num_threads(1)
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current RSS
        f.write("5")
    start = time.perf_counter()
    data = load_source(source)
    xs, us = data.subset("train")
    norm = Normalizer.fit(xs, us)
    xs, us = norm.x(xs), norm.u(us)
    num_batches, num_sequences, total = 0, 0, 0.0
    for batch in batches(xs, us, batch_size, generator=torch.Generator().manual_seed(0), by_length=True):
        num_batches += 1
        num_sequences += batch.batch_size
        total += float(batch.x.sum())  # touch the batch
    seconds = time.perf_counter() - start
    return {"peak_mb": (_status("VmHWM") - before) / 2 ** 20, "seconds": seconds, "batches": num_batches,
            "sequences": num_sequences, "lazy": bool(data.meta.get("lazy", False)), "checksum": total}


def run_child(source: str, batch_size: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", source, "--batch-size",
                          str(batch_size)], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child on {source} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--scales", default=None, help="comma-separated multiples of the base size (default 1,2,5,10)")
    ap.add_argument("--episodes", type=int, default=None, help="episodes at 1x (default 2000; --quick 60)")
    ap.add_argument("--steps", type=int, default=None, help="actions per episode at most (default 250; --quick 20)")
    ap.add_argument("--shard-size", type=int, default=None, help="episodes per shard (default 1000; --quick 25)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tmp", default=None, help="directory for the data files (default: a temporary one)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.batch_size)))
        return 0
    episodes = a.episodes or (60 if a.quick else 2000)
    steps = a.steps or (20 if a.quick else 250)
    shard_size = a.shard_size or (25 if a.quick else 1000)
    scales = [int(s) for s in (a.scales or ("1,2" if a.quick else "1,2,5,10")).split(",")]
    out_path = a.out or os.path.join(ROOT, "bench", "results", "loader-quick.json" if a.quick else "loader.json")

    rows = []
    print(f"{'scale':>5} {'data MB':>8} | {'lazy peak MB':>12} {'s':>6} | {'in-memory peak MB':>17} {'s':>6}")
    for scale in scales:
        tmp = tempfile.mkdtemp(prefix="dvae-bench-loader-", dir=a.tmp)
        try:
            files = write_data(tmp, episodes * scale, steps, shard_size, seed=scale)
            lazy = run_child(files["shards"], a.batch_size)
            eager = run_child(files["npz"], a.batch_size)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        assert lazy["lazy"] and not eager["lazy"] and lazy["sequences"] == eager["sequences"]
        assert abs(lazy["checksum"] - eager["checksum"]) <= 1e-6 * max(1.0, abs(eager["checksum"])) + 1e-2
        rows.append({"scale": scale, "episodes": episodes * scale, "data_mb": files["mb"], "lazy": lazy, "in_memory": eager})
        print(f"{scale:>5} {files['mb']:>8.1f} | {lazy['peak_mb']:>12.1f} {lazy['seconds']:>6.1f} | "
              f"{eager['peak_mb']:>17.1f} {eager['seconds']:>6.1f}", flush=True)
    report = {"config": {"episodes_1x": episodes, "steps": steps, "shard_size": shard_size, "obs_dim": 12,
                         "act_dim": 4, "batch_size": a.batch_size, "scales": scales},
              "machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "cpus": os.cpu_count()},
              "rows": rows}
    from dvae.files import write_json

    write_json(out_path, report)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
