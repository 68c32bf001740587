"""The data-to-controller benchmark runs end to end (``--quick``): collect, train under a CPU-time limit,
plan; every figure it writes is a real number and the normalised return is the one its returns give."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow  # three dvae processes (collect, train, plan), each importing torch: about 10 CPU seconds
def test_bench_plan_quick(tmp_path):
    out = tmp_path / "plan.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_plan.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert steps["collect"]["output"]["num_transitions"] == 10 * 20
    train = steps["train"]
    assert train["clock"] == "cpu" and "--time-limit 2" in train["command"]
    assert train["metrics"]["epochs"] >= 1 and math.isfinite(train["metrics"]["best_valid_neg_elbo_per_step"])
    # the limit counts the training's CPU seconds (Trainer.clock): what the trainer counted stays near it
    assert 0 < train["output"]["train_seconds"] <= 2.0 + 5.0 and train["cpu_seconds"] >= train["output"]["train_seconds"]
    plan = steps["plan"]["output"]
    assert plan["episodes"] == 1 and len(plan["returns"]) == 1
    rnd, true = plan["baselines"]["random"]["mean_return"], plan["baselines"]["true_model"]["mean_return"]
    assert report["normalized_return"] == pytest.approx((plan["mean_return"] - rnd) / (true - rnd))
