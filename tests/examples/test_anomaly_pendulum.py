"""examples/anomaly_pendulum.py: its fault injection against the simulator and by hand, its rates on a
hand-built case, and its --quick smoke run end to end."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SCRIPT = os.path.join(ROOT, "examples", "anomaly_pendulum.py")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("anomaly_pendulum", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_simulate_without_offset_replays_collected_episodes(example):
    from envs import collect

    d = collect("Pendulum-v1", episodes=2, steps=12, policy="ou", seed=5)
    for i in range(2):  # episode i of collect is reset with seed + i
        got = example.simulate(5 + i, d["actions"][i], np.zeros_like(d["actions"][i]))
        np.testing.assert_array_equal(got, d["obs"][i])


def test_an_actuator_offset_changes_the_trajectory_from_the_segment_on(example):
    actions = np.zeros((12, 1), np.float32)
    offset = np.zeros_like(actions)
    offset[4:7] = 1.0  # u_4 .. u_6 drive x_5 .. x_7
    clean = example.simulate(3, actions, np.zeros_like(actions))
    faulty = example.simulate(3, actions, offset)
    np.testing.assert_array_equal(faulty[:5], clean[:5])
    assert np.all(np.abs(faulty[5:, 2] - clean[5:, 2]) > 1e-3)


def test_a_stuck_sensor_holds_its_last_reading_over_the_segment_only(example):
    obs = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    out = example.stuck_sensor(obs, 4, 3, 2)
    assert np.all(out[4:7, 2] == obs[3, 2])
    keep = np.ones_like(obs, bool)
    keep[4:7, 2] = False
    np.testing.assert_array_equal(out[keep], obs[keep])


def test_the_test_set_pairs_each_clean_episode_with_its_faults(example):
    args = example.parse_args(["--quick"])
    args.test_episodes = 3
    t = example.make_test_set(args, np.random.default_rng(1))
    assert t["obs"].shape == (9, args.steps + 1, 3) and t["actions"].shape == (9, args.steps, 1)
    np.testing.assert_array_equal(t["fault_kind"], [0, 1, 2] * 3)
    assert t["fault_mask"][0::3].sum() == 0 and np.all(t["fault_mask"][1::3].sum(1) == args.segment)
    for e in range(3):
        clean, stuck, off = t["obs"][3 * e:3 * e + 3]
        np.testing.assert_array_equal(t["actions"][3 * e], t["actions"][3 * e + 2])  # logged controls unchanged
        m = t["fault_mask"][3 * e + 1]
        np.testing.assert_array_equal(stuck[~m], clean[~m])
        start = int(np.flatnonzero(t["fault_mask"][3 * e + 2])[0])
        np.testing.assert_array_equal(off[:start], clean[:start])


def test_rates_by_hand(example):
    kind = np.array([0, 1, 2])
    mask = np.zeros((3, 7), bool)
    mask[1, 2:4] = mask[2, 3:5] = True
    scored = np.array([False, True, True, True, True, True, False])  # burn-in 1, the last step out
    scores = np.zeros((3, 7))
    scores[0, 1] = 5.0  # one false alarm in 5 scored clean steps
    scores[0, 6] = 5.0  # outside the scored window: not counted
    scores[1, 3] = 5.0  # one of two faulty steps flagged: detected
    scores[2, 1] = 5.0  # flagged outside the segment: a false alarm, not a detection
    r = example.rates(scores, 1.0, kind, mask, scored, np.array([False, True, False]))
    assert r["threshold"] == 1.0
    assert r["false_alarm_rate"] == pytest.approx(1 / 5)
    assert r["false_alarm_rate_outside_segments"] == pytest.approx(1 / 6)
    assert r["stuck sensor"] == {"detection_rate": 1.0, "step_recall": 0.5, "num_segments": 1}
    assert r["actuator offset"]["detection_rate"] == 0.0
    assert r["detection_rate"] == 0.5 and r["step_recall"] == 0.25
    assert r["chance_detection_rate"] == pytest.approx(1 - (1 - 1 / 5) ** 2)  # segments of 2 steps
    assert r["sequence_flag_rate"] == {"clean": 0.0, "stuck sensor": 1.0, "actuator offset": 0.0}


def test_quick_mode_runs_end_to_end(example, tmp_path, capsys):
    result = example.main(["--quick", "--out", str(tmp_path)])  # in process: the script's own main
    assert json.loads(open(tmp_path / "results.json").read()) == json.loads(json.dumps(result))
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(result))
    for key in ("detection_rate", "step_recall", "false_alarm_rate", "false_alarm_rate_outside_segments"):
        assert 0.0 <= result[key] <= 1.0
    assert result["stuck sensor"]["num_segments"] == 4 and result["actuator offset"]["num_segments"] == 4
    scores = json.loads(open(tmp_path / "scores.json").read())
    assert len(scores["sequences"]) == 12 and all(len(s["per_step"]) == 25 for s in scores["sequences"])
    valid = json.loads(open(tmp_path / "valid_scores.json").read())  # the threshold: the validation steps' quantile
    steps = np.concatenate([s["per_step"][3:24] for s in valid["sequences"]])
    assert result["threshold"] == pytest.approx(float(np.quantile(steps, 0.95)), rel=1e-12)
    assert result["num_valid_steps"] == len(steps) and set(result["sweep"]) == {"0.9", "0.95", "0.99"}
    assert os.path.getsize(tmp_path / "anomaly_scores.png") > 10_000


@pytest.mark.slow
def test_the_script_runs_from_the_shell(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout) == json.loads(open(tmp_path / "results.json").read())


def test_the_score_figure_has_readable_axes(example, tmp_path):
    """Scores in plain numbers (1, 10, 100: no 10^x), labelled with what they are and their unit; the
    observation panel in rad/s; steps on integer ticks."""
    rng = np.random.default_rng(0)
    T1 = 21
    per_step = np.abs(rng.normal(size=(3, T1))) * 30  # (N, T+1) scores
    kind, mask = np.arange(3), np.zeros((3, T1), bool)
    mask[1:, 8:12] = True
    scored = (np.arange(T1) >= 2) & (np.arange(T1) < T1 - 1)
    test = {"obs": rng.normal(size=(3, T1, 3))}
    fig = example.plot(per_step, 5.0, kind, mask, scored, test, str(tmp_path / "a.png"))
    axes = np.asarray(fig.axes).reshape(3, 2)
    assert all(ax.get_ylabel() == "anomaly score:\nper-step -ELBO (nats)" for ax in axes[:, 1])
    assert all(ax.get_ylabel() == "theta dot (rad/s)" for ax in axes[:, 0])
    fig.canvas.draw()
    labels = [t.get_text() for t in axes[0, 1].get_yticklabels() if t.get_text()]
    assert labels and not any("^" in t or "times" in t for t in labels), labels
    assert all(float(v).is_integer() for v in axes[-1, 1].get_xticks())
