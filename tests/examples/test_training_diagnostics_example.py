"""examples/training_diagnostics.py runs every part end to end in its reduced mode (``--smoke``)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_training_diagnostics_example_smoke():
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "training_diagnostics.py"), "--smoke"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for heading in ("## 1. Weighting the KL", "## 2. DMM guides", "## 3. Conditioning"):
        assert heading in out
    tables = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| setting")
              and not line.startswith("| guide") and not line.startswith("| model")]
    assert len(tables) == 6 + 4 + 5  # one row per setting, guide and model run
    assert "nan" not in out
