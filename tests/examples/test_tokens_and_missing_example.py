"""Smoke run of examples/tokens_and_missing.py in its reduced mode (the script behind
docs/tokens-and-missing-data.md)."""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_tokens_and_missing_example_runs_reduced(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "tokens_and_missing.py"), "--smoke",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.load(open(tmp_path / "results.json"))
    t = res["tokens"]
    assert t["log_vocab_size"] == math.log(49) and 0 < t["grammar_entropy_per_token"] < t["log_vocab_size"]
    assert t["models"]["vrnn"]["num_steps"] == t["test_tokens"]
    methods = res["missing"]["methods"]
    assert {"linear interpolation", "Kalman smoother, true parameters", "DMM, posterior predictive"} <= set(methods)
    assert all(math.isfinite(v) for r in methods.values() for v in r.values())
    assert "| Kalman smoother, true parameters |" in proc.stdout
