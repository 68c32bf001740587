"""The training benchmark runs end to end (``--quick``) and its variants score the same loss."""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_training_quick(tmp_path):
    out = tmp_path / "training.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_training.py"), "--quick",
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(b)/(a)" in proc.stdout and "(b)/(c)" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"dmm", "vrnn", "vrae"}
    for fam, row in report["summary"].items():
        for variant in ("per_step_tmf", "per_step", "vectorized", "torch"):
            assert row[variant]["epoch_seconds_median"] > 0 and row[variant]["saved_mb"] > 0
        assert all(math.isfinite(r) and r > 0 for r in row["ratios"].values())
        # same weights and the same draws: the first update scores the same -ELBO in every variant
        assert row["first_batch_loss_max_rel_diff"] < 1e-4, (fam, row["first_batch_loss"])
        assert row["vectorized_bucketed"]["epoch_seconds_median"] > 0
        assert {"b_bucketed_over_a", "b_bucketed_over_a0", "b_over_a", "b_over_c", "r_over_a", "r_over_b"} <= set(row["ratios"])
        assert row["loops"]["epoch_seconds_median"] > 0 and row["loops"]["saved_mb"] > 0
    # (b') takes length-bucketed batches of the same sequences: the same real steps, no more padding
    steps = report["epoch_steps"]
    assert steps["random"]["real_steps"] == steps["bucketed"]["real_steps"] > 0
    assert steps["bucketed"]["padded_steps"] <= steps["random"]["padded_steps"]
    assert report["machine"]["torch_threads"] == 1 and report["config"]["batches"] == 3
    # the tables of docs/performance.md come from the same file
    md = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_training.py"), "--markdown-from", str(out)],
                        capture_output=True, text=True, timeout=60)
    assert md.returncode == 0, md.stderr
    assert "| VRAE | (r) the recurrent loops alone (a floor) |" in md.stdout and "| (r)/(a) |" in md.stdout


def test_rnn_loop_bench_runs(tmp_path):
    out = tmp_path / "rnn_loop.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "rnn_loop.py"), "--steps", "6", "--hidden", "16",
                           "--batch", "3", "--repeats", "2", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["T"] == 6 and all(report[k]["seconds"] > 0 for k in ("loop", "small", "large"))
