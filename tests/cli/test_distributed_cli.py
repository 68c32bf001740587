"""`dvae train` under torchrun with two CPU processes (gloo): it trains, checkpoints, resumes and
evaluates (slow: three starts of two processes importing torch and pyro); a rank that fails ends the
job with its message. The data-parallel arithmetic itself is tested in tests/infer/test_distributed.py."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from dvae.cli import main
from dvae.data.lazy import write_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--z-dim", "2", "--rnn-dim", "8", "--transition-dim", "8", "--emission-dim", "8", "--batch-size", "4",
        "--seed", "0", "--no-progress", "--patience", "0"]


def torchrun(*args, timeout=240):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "dvae.cli", "train", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def shards(d, nan_at=None):
    """24 ragged trajectories in 3 shards; ``nan_at`` (sequence, step) puts a NaN in one observation."""
    g = np.random.default_rng(0)
    obs = np.cumsum(g.standard_normal((24, 11, 2)), axis=1).astype(np.float32)
    actions = g.standard_normal((24, 10, 1)).astype(np.float32)
    lengths = g.integers(5, 11, 24)
    if nan_at is not None:
        obs[nan_at[0], nan_at[1], 0] = np.nan
    d.mkdir()
    entries = []
    for k in range(3):
        sl = slice(8 * k, 8 * (k + 1))
        np.savez(d / f"part{k}.npz", obs=obs[sl], actions=actions[sl], lengths=lengths[sl])
        entries.append({"file": f"part{k}.npz", "episodes": 8})
    write_manifest(str(d), entries)
    return d


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_and_evaluate(tmp_path, capsys):
    data = shards(tmp_path / "data")
    run = tmp_path / "run"
    p = torchrun("--data", data, "--epochs", 1, *TINY, "--out", run)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout  # rank 0 alone prints
    summary = json.loads(lines[0])
    assert summary["world_size"] == 2 and summary["epochs"] == 1
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "best.pt", "training_curves.png"} <= set(os.listdir(run))
    first = [json.loads(r) for r in open(run / "metrics.jsonl")]

    p = torchrun("--resume", run, "--epochs", 2)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(r) for r in open(run / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0] == first[0]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["valid_neg_elbo_per_step"]) for r in rows)

    assert main(["eval", str(run), "--split", "all"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["num_sequences"] == 24 and np.isfinite(ev["neg_elbo_per_step"])


@pytest.mark.parametrize("dist_timeout", [60])
def test_a_rank_that_fails_ends_the_job_with_its_message(tmp_path, dist_timeout):
    """A NaN in validation sequence 14 (of 24: the split is [9, 14]), read lazily by rank 1 alone (rank r
    validates sequences r, r + 2, ... of the split): rank 1 fails at the end of epoch 1 while rank 0
    waits in the validation all-reduce; the job ends, non-zero, well within the timeout, with rank 1's
    data error on stderr."""
    data = shards(tmp_path / "data", nan_at=(14, 3))  # part1.npz, its sequence 6
    start = time.perf_counter()
    p = torchrun("--data", data, "--epochs", 2, *TINY, "--dist-timeout", dist_timeout, "--out", tmp_path / "run")
    assert p.returncode != 0
    assert time.perf_counter() - start < dist_timeout + 30
    assert "dvae train (rank 1 of 2): error: " in p.stderr, p.stderr[-3000:]
    assert "part1.npz: obs has nan (nan/inf) at sequence 6, step 3" in p.stderr, p.stderr[-3000:]
