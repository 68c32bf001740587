"""bench/bench_length.py runs, in process, on tiny sizes: its JSON holds each family's update times at T
and factor x T and the ratio of the costs per step that those times give; a family that refuses the
data is a one-line usage error."""

import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench import bench_length  # noqa: E402


def test_the_report_holds_the_times_and_their_ratio(tmp_path):
    out = tmp_path / "length.json"
    assert bench_length.main(["--families", "dmm,kvae", "--steps", "3", "--factor", "2", "--batch", "2",
                              "--x-dim", "4", "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["family"] for r in report["families"]] == ["dmm", "kvae"]
    for r in report["families"]:
        short, long = r["update_cpu_s"]["3"], r["update_cpu_s"]["6"]
        assert short > 0 and long > 0
        assert r["cpu_s_per_step"] == {"3": short / 3, "6": long / 6}
        assert math.isclose(r["ratio"], (long / 6) / (short / 3))


def test_a_family_that_refuses_the_data_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench_length.main(["--families", "lgssm", "--steps", "2", "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2 and "lgssm" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
