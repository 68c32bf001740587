"""The LGSSM benchmark runs end to end (``--quick``): both programs time an update and agree on the loss."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_lgssm_quick(tmp_path):
    out = tmp_path / "lgssm.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_lgssm.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["per_step_ms"] > 0 and row["vectorized_ms"] > 0
    assert row["loss_difference"] < 1e-4 * abs(row["loss"])  # float32: the same exact likelihood
