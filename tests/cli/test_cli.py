"""Every verb of the `dvae` command end to end on tiny data (in process, plus the installed entry point)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dvae.cli import main
from tests.conftest import run_cli as run, write_random_walks

TINY = ["--epochs", "1", "--z-dim", "2", "--rnn-dim", "8", "--transition-dim", "8", "--emission-dim", "8",
        "--batch-size", "8", "--seed", "0", "--no-progress"]
POLY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "polyphonic", "Piano-midi.de.pickle")


@pytest.fixture(scope="module")
def traj(tmp_path_factory):
    return write_random_walks(tmp_path_factory.mktemp("data"), steps=11)


@pytest.mark.parametrize("family", ["dmm", "vrnn", "vrae", "lgssm", "vae"])
def test_train_then_eval_writes_the_run_and_prints_the_contract_keys(capsys, tmp_path, traj, family):
    code, summary, err = run(capsys, "train", "--model", family, "--data", traj, *TINY, "--out", tmp_path / "run")
    assert code == 0, err
    files = set(os.listdir(tmp_path / "run"))
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "best.pt", "training_curves.png",
            "reconstruction.png", "prediction.png"} <= files
    row = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert {"epoch", "epoch_seconds", "train_loss", "valid_neg_elbo_per_step"} <= set(row)
    code, ev, err = run(capsys, "eval", tmp_path / "run", "--data", traj, "--split", "all", "--iw-samples", "3",
                        "--context", "3", "--horizon", "4", "--plots", tmp_path / "plots")
    assert code == 0, err
    assert len(ev["kstep_nll"]) == 4 and all(np.isfinite(ev["kstep_nll"]))
    assert all(0 <= c <= 1 for c in ev["kstep_coverage90"])
    assert len(ev["plots"]) == 4 and all(os.path.getsize(p) > 1000 for p in ev["plots"])
    assert ev["num_sequences"] == 12 and ev["num_steps"] == 12 * 11
    assert np.isfinite(ev["neg_elbo_per_step"]) and np.isfinite(ev["nll_iw_per_step"])
    assert len(ev["kstep_rmse"]) == 4 and len(ev["baselines"]["linear"]["kstep_rmse"]) == 4
    assert len(ev["baselines"]["persistence"]["kstep_rmse"]) == 4
    if family == "lgssm":  # an exact likelihood: the bound is the NLL itself
        assert ev["nll_exact_per_step"] == ev["neg_elbo_per_step"]
    else:
        assert "nll_exact_per_step" not in ev


def test_resume_continues_to_the_total_and_matches_an_uninterrupted_run(capsys, tmp_path, traj):
    args = ["train", "--data", traj, *TINY[2:], "--patience", "0"]
    assert run(capsys, *args, "--epochs", "2", "--out", tmp_path / "a")[0] == 0
    assert run(capsys, *args, "--epochs", "1", "--out", tmp_path / "b")[0] == 0
    code, summary, err = run(capsys, "train", "--resume", tmp_path / "b", "--epochs", "2", "--no-progress")
    assert code == 0, err
    rows_a = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
    rows_b = [json.loads(l) for l in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows_b] == [1, 2]
    for ra, rb in zip(rows_a, rows_b):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
        assert ra["valid_neg_elbo_per_step"] == pytest.approx(rb["valid_neg_elbo_per_step"], rel=1e-5)


def test_collect_writes_the_trajectory_layout(capsys, tmp_path):
    code, out, err = run(capsys, "collect", "--env", "Pendulum-v1", "--episodes", "2", "--steps", "5",
                         "--policy", "ou", "--seed", "3", "--out", tmp_path / "p.npz")
    assert code == 0, err
    f = np.load(tmp_path / "p.npz")
    assert f["obs"].shape == (2, 6, 3) and f["actions"].shape == (2, 5, 1) and str(f["env_id"]) == "Pendulum-v1"


def test_builtin_pendulum_source_trains_and_evaluates_from_config(capsys, tmp_path):
    code, _, err = run(capsys, "train", *TINY, "--episodes", "6", "--steps", "8", "--out", tmp_path / "r")
    assert code == 0, err
    code, ev, err = run(capsys, "eval", tmp_path / "r", "--split", "test")
    assert code == 0, err
    assert ev["num_sequences"] == 1 and ev["num_steps"] == 9


@pytest.mark.parametrize("make, args, message", [
    (lambda d: np.savez(d / "nan.npz", obs=np.where(np.arange(30).reshape(3, 5, 2) == 13, np.nan, 0.0)),
     ["train", "--data", "{d}/nan.npz"], "nan.*sequence 1, step 1, dim 1"),
    (lambda d: None, ["eval", "{d}/no-such-run"], "no such run directory"),
    (lambda d: None, ["train", "--data", "{d}/missing.npz"], "missing.npz: no such file"),
    (lambda d: None, ["collect", "--env", "NoSuchEnv-v0", "--episodes", "1", "--steps", "2", "--out", "{d}/x.npz"],
     "unknown Gymnasium env id"),
    (lambda d: (d / "run").mkdir() or (d / "run" / "config.json").write_text("{not json"),
     ["eval", "{d}/run"], "config.json: not valid JSON"),
    (lambda d: (d / "run2").mkdir() or (d / "run2" / "config.json").write_text('{"model": {"z_dim": 2, "bogus": 1}, "train": {}, "data": {}}'),
     ["eval", "{d}/run2"], r"unknown keys \['bogus'\]"),
])
def test_bad_input_gives_one_clear_line_and_nonzero_exit(capsys, tmp_path, make, args, message):
    make(tmp_path)
    code, _, err = run(capsys, *[a.format(d=tmp_path) for a in args], *(TINY if args[0] == "train" else []))
    assert code != 0
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    import re
    assert re.search(message, err, re.IGNORECASE), err


def test_eval_refuses_a_checkpoint_from_another_configuration(capsys, tmp_path, traj):
    assert run(capsys, "train", "--data", traj, *TINY, "--out", tmp_path / "r")[0] == 0
    cfg = json.load(open(tmp_path / "r" / "config.json"))
    cfg["model"]["z_dim"] = 5
    json.dump(cfg, open(tmp_path / "r" / "config.json", "w"))
    code, _, err = run(capsys, "eval", tmp_path / "r")
    assert code != 0 and "does not match the model" in err


def test_installed_entry_point_runs():
    exe = shutil.which("dvae") or os.path.join(os.path.dirname(sys.executable), "dvae")
    p = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "train" in p.stdout and "collect" in p.stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(POLY), reason="shared polyphonic data not present")
def test_polyphonic_train_and_eval(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--data", POLY, *TINY, "--out", tmp_path / "poly")
    assert code == 0, err
    code, ev, err = run(capsys, "eval", tmp_path / "poly", "--split", "test")
    assert code == 0 and ev["num_sequences"] == 25 and ev["num_steps"] == 19036


@pytest.mark.slow
def test_contract_script_passes():
    script = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "checks", "contract.py")
    if not os.path.exists(script):
        pytest.skip("../shared/checks/contract.py not present")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    p = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=3000)
    assert p.returncode == 0, p.stdout[-3000:]


def test_time_limit_stops_training_early_with_a_usable_run(capsys, tmp_path, traj):
    args = [a for a in TINY if a not in ("--epochs", "1")]
    code, summary, err = run(capsys, "train", "--data", traj, *args, "--epochs", "100000", "--time-limit", "1",
                             "--out", tmp_path / "r")
    assert code == 0, err
    assert 1 <= summary["epochs"] < 100000
    assert run(capsys, "eval", tmp_path / "r", "--data", traj, "--split", "all")[0] == 0


def test_score_per_step_sums_to_eval_and_flags_an_injected_fault(capsys, tmp_path, traj):
    assert run(capsys, "train", "--data", traj, *TINY, "--out", tmp_path / "r")[0] == 0
    code, sc, err = run(capsys, "score", tmp_path / "r", "--data", traj, "--split", "all", "--iw-samples", "2")
    assert code == 0, err
    code, ev, err = run(capsys, "eval", tmp_path / "r", "--data", traj, "--split", "all")
    assert code == 0, err
    seqs = sc["sequences"]
    assert [s["index"] for s in seqs] == list(range(12)) and all(len(s["per_step"]) == 11 for s in seqs)
    for s in seqs:
        assert s["neg_elbo"] == pytest.approx(sum(s["per_step"]), rel=1e-5, abs=1e-4)
    assert sum(s["neg_elbo"] for s in seqs) / ev["num_steps"] == pytest.approx(ev["neg_elbo_per_step"], rel=1e-5)
    # a wild sequence scores above the threshold
    f = np.load(traj)
    obs = f["obs"].copy()
    obs[0, 4:] += 50.0
    np.savez(tmp_path / "fault.npz", obs=obs, actions=f["actions"])
    code, sc, err = run(capsys, "score", tmp_path / "r", "--data", tmp_path / "fault.npz", "--split", "all")
    assert code == 0, err
    assert sc["sequences"][0]["anomalous"] and sc["sequences"][0]["neg_elbo_per_step"] > sc["threshold"]
    code = main(["score", str(tmp_path / "r"), "--data", str(traj), "--split", "all", "--format", "csv"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[0].startswith("# threshold=") and out[1] == "index,step,neg_elbo" and len(out) == 2 + 12 * 11


def test_score_step_threshold_is_the_quantile_of_the_validation_steps(capsys, tmp_path, traj):
    assert run(capsys, "train", "--data", traj, *TINY, "--out", tmp_path / "r")[0] == 0
    code, sc, err = run(capsys, "score", tmp_path / "r", "--split", "valid", "--quantile", "0.7")
    assert code == 0, err  # the split scored is the reference itself, scored with the same draws
    steps = np.concatenate([s["per_step"] for s in sc["sequences"]])
    assert sc["step_threshold"] == pytest.approx(float(np.quantile(steps, 0.7)), rel=1e-12)
    assert sc["threshold"] == pytest.approx(float(np.quantile([s["neg_elbo_per_step"] for s in sc["sequences"]], 0.7)),
                                            rel=1e-12)
