"""examples/pendulum_mbrl.py runs its whole loop (collect, train, plan and save, retrain, evaluate) in --quick mode."""

import importlib.util
import json
import math
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_example():
    spec = importlib.util.spec_from_file_location("pendulum_mbrl", os.path.join(ROOT, "examples", "pendulum_mbrl.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mbrl_quick_loop(tmp_path):
    summary = load_example().main(["--quick", "--out", str(tmp_path)])
    # 6 OU episodes of 12 steps, then 1 planned episode of 10 steps (--quick): the steps trained on
    assert summary["env_steps_for_training"] == 6 * 12 + 10
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    planned = np.load(tmp_path / "planned-1.npz")
    assert planned["lengths"].tolist() == [10]
    np.testing.assert_allclose(planned["rewards"].sum(), summary["rounds"][1]["planner_returns"][0], rtol=1e-5)
    merged = np.load(tmp_path / "data-1.npz")
    assert merged["obs"].shape == (7, 13, 3) and merged["lengths"].tolist() == [12] * 6 + [10]
    np.testing.assert_array_equal(merged["obs"][6, :11], planned["obs"][0])  # the planned episode, then
    np.testing.assert_array_equal(merged["obs"][6, 11:], planned["obs"][0, [-1, -1]])  # padded with its last obs
    final = summary["final"]
    assert math.isfinite(final["normalized_return"]) and set(final["baselines"]) == {"random", "true_model"}
    assert json.loads((tmp_path / "summary.json").read_text())["env_steps_for_training"] == 82
