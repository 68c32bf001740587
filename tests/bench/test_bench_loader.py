"""The loader benchmark runs end to end (``--quick``): both layouts read the same epoch."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_loader_quick(tmp_path):
    out = tmp_path / "loader.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_loader.py"), "--quick", "--scales", "1,3",
                           "--out", str(out)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert [r["scale"] for r in report["rows"]] == [1, 3]
    for row in report["rows"]:
        lazy, eager = row["lazy"], row["in_memory"]
        assert lazy["lazy"] and not eager["lazy"]
        # 80% of the episodes are the training split; batches of 16
        assert lazy["sequences"] == eager["sequences"] == round(0.8 * row["episodes"])
        assert lazy["batches"] == -(-lazy["sequences"] // 16)
        assert lazy["peak_mb"] > 0 and eager["peak_mb"] > 0 and lazy["seconds"] > 0
