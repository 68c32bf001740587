"""The time-to-quality benchmark runs end to end (``--quick``) on both data sets (a tiny Nottingham-shaped
pickle in the place of the real one), with both objectives; every figure it writes is a real number."""

import json
import math
import os
import subprocess
import sys

from tests.bench.test_bench_quality import _tiny_pickle

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_convergence_quick(tmp_path):
    _tiny_pickle(tmp_path / "Nottingham.pickle")
    out = tmp_path / "convergence.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_convergence.py"), "--quick",
                           "--polyphonic-dir", str(tmp_path), "--families", "dmm", "lgssm", "--objectives", "elbo",
                           "iwae", "--train-samples", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert (tmp_path / "convergence.png").stat().st_size > 0
    budget = report["budget_cpu_seconds"]
    assert budget <= 2.0 and report["machine"]["torch_threads"] == 1
    runs = report["runs"]
    assert [(r["dataset"], r["family"], r["objective"]) for r in runs] == [  # lgssm: Gaussian data only
        ("nottingham", "dmm", "elbo"), ("nottingham", "dmm", "iwae")] + [
        ("lg", f, o) for f, o in (("dmm", "elbo"), ("dmm", "iwae"), ("lgssm", "elbo"))]
    for r in runs:
        assert r["stopped_by"] in ("budget", "converged"), r["stopped_by"]
        assert 0 < r["train_cpu_seconds"] <= budget + 1.0
        assert r["train_config"]["epochs"] is None and r["train_config"]["objective"] == r["objective"]
        assert r["curve"] and all(math.isfinite(p["valid_neg_elbo_per_step"]) and p["lr"] > 0 for p in r["curve"])
        assert all(p["cpu_seconds"] <= r["train_cpu_seconds"] + 1e-9 for p in r["curve"])
        assert any("test_neg_elbo_per_step" in p for p in r["curve"])
        assert math.isfinite(r["test_best"]["neg_elbo_per_step"])
    iwae = runs[1]
    assert iwae["train_samples"] == 3 and iwae["train_config"]["train_samples"] == 3
    for r in runs[2:]:  # lg: against the exact NLL of the true system
        assert math.isfinite(r["exact_nll_per_step"]) and "iw_gap_to_exact" in r
    lgssm = runs[4]["test_best"]  # no latent sites: its ELBO and IW bound are both its exact likelihood
    assert math.isclose(lgssm["neg_elbo_per_step"], lgssm["nll_iw_per_step"], abs_tol=1e-3)  # float32 sums
