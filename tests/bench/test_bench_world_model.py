"""The world-model benchmark runs end to end (``--quick``), for untrained families and a trained run."""

import json
import math
import os
import subprocess
import sys

from dvae.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "bench", "bench_world_model.py")


def _run(*args):
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def _check(report, families):
    real = report["real_env_steps_per_s"]
    assert real["single"] > 0 and real["vectorised"] > 0
    rows = report["world_model"]
    assert [(r["model"], r["batch"]) for r in rows] == [(f, n) for f in families for n in (1, 64, 1024)]
    for r in rows:
        assert math.isfinite(r["imagined_steps_per_s"]) and r["imagined_steps_per_s"] > 0
        assert math.isclose(r["ratio_to_single_env"], r["imagined_steps_per_s"] / real["single"], rel_tol=1e-9)
        assert math.isclose(r["ratio_to_vectorised_env"], r["imagined_steps_per_s"] / real["vectorised"], rel_tol=1e-9)


def test_bench_world_model_families(tmp_path):
    out = tmp_path / "wm.json"
    proc = _run("--families", "dmm,lgssm", "--out", str(out))
    assert "imagined steps/s" in proc.stdout
    _check(json.loads(out.read_text()), ["dmm", "lgssm"])


def test_bench_world_model_trained_run(tmp_path):
    traj = tmp_path / "p.npz"
    assert main(["collect", "--env", "Pendulum-v1", "--episodes", "6", "--steps", "12", "--seed", "1",
                 "--out", str(traj)]) == 0
    run = tmp_path / "run"
    assert main(["train", "--model", "vrnn", "--data", str(traj), "--epochs", "1", "--z-dim", "2", "--rnn-dim", "8",
                 "--transition-dim", "8", "--emission-dim", "8", "--no-progress", "--out", str(run)]) == 0
    out = tmp_path / "wm.json"
    _run("--run", str(run), "--out", str(out))
    report = json.loads(out.read_text())
    assert report["run"] == str(run)
    _check(report, ["vrnn"])
