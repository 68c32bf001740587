"""Numerical faults and interruptions: training recovers or stops clearly, never loses the run, and a
resumed run gives the results of an uninterrupted one."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dvae.infer.trainer import TrainConfig, Trainer, TrainingDiverged
from dvae.models import ModelConfig, build_model

DVAE = [sys.executable, "-m", "dvae.cli"]
TINY = ["--z-dim", "2", "--rnn-dim", "8", "--transition-dim", "8", "--emission-dim", "8", "--batch-size", "4",
        "--seed", "0", "--no-progress", "--patience", "0"]


def _data(n=12, length=8, seed=0):
    g = np.random.default_rng(seed)
    return [g.standard_normal((length, 2)).astype(np.float32) for _ in range(n)]


def _trainer(epochs=2, **kw):
    torch.manual_seed(0)
    model = build_model(ModelConfig("dmm", x_dim=2, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    xs = _data()
    return Trainer(model, TrainConfig(epochs=epochs, batch_size=4, patience=0, **kw), (xs, None), (xs[:4], None))


def _poison(trainer, bad_updates):
    """Make the emitter return NaN during the given updates (counted from 1; "always": every one)."""
    emitter, svi = trainer.model.emitter, trainer.svi
    forward, step, state = emitter.forward, svi.step, {"n": 0, "on": False}

    def poisoned(z):
        out = forward(z)
        return tuple(o * float("nan") for o in out) if state["on"] else out

    def counting_step(*args, **kwargs):
        state["n"] += 1
        state["on"] = state["n"] in bad_updates or "always" in bad_updates
        try:
            return step(*args, **kwargs)
        finally:
            state["on"] = False

    emitter.forward = poisoned
    svi.step = counting_step


def test_a_nonfinite_update_is_skipped_restored_and_the_lr_lowered():
    t = _trainer()
    _poison(t, {2})  # the 2nd update (3 updates per epoch)
    rows = t.fit(progress=False)
    assert len(rows) == 2 and t.state["faults"] == 1
    assert rows[0]["skipped_updates"] == 1 and rows[0]["lr"] == pytest.approx(t.config.lr * 0.5)
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert np.isfinite(rows[-1]["valid_neg_elbo_per_step"])


def test_a_skipped_update_keeps_clipped_adams_decay_and_halves_the_rate():
    decay = 0.9
    t = _trainer(epochs=1, optimizer="clipped_adam", lr_decay=decay)
    _poison(t, {3})  # 3 updates: the first two decay the rate twice, the last is skipped (no decay) and recovered
    t.fit(progress=False)
    assert t.state["faults"] == 1
    lrs = [g["lr"] for opt in t.optim.optim_objs.values() for g in opt.param_groups]
    # the decayed rate, halved (before the fix: reset to config.lr * 0.5, undoing the decay)
    assert lrs and lrs == pytest.approx([0.5 * t.config.lr * decay ** 2] * len(lrs))


def test_persistent_faults_stop_with_a_clear_error_after_bounded_retries():
    t = _trainer()
    _poison(t, {"always"})
    with pytest.raises(TrainingDiverged, match=r"training diverged: 6 non-finite updates"):
        t.fit(progress=False)
    assert all(torch.isfinite(p).all() for p in t.model.parameters())  # the last good state was restored


@pytest.mark.parametrize("stop_after", [1, 4])  # inside epoch 1, and inside epoch 2 (3 updates per epoch)
def test_resume_after_a_stop_mid_epoch_equals_an_uninterrupted_run(stop_after):
    full = _trainer(epochs=3)
    full_rows = full.fit(progress=False)

    part = _trainer(epochs=3)
    step, count = part.svi.step, {"n": 0}

    def counting_step(*args, **kwargs):
        count["n"] += 1
        if count["n"] == stop_after:
            part.request_stop()  # as the SIGINT/SIGTERM handler does
        return step(*args, **kwargs)

    part.svi.step = counting_step
    part.fit(progress=False)
    assert part.stopped
    ckpt = part.checkpoint()
    torch.save(ckpt, "/dev/null")  # a checkpoint is plain tensors and containers

    resumed = _trainer(epochs=3)
    resumed.load_checkpoint(ckpt)
    rows = resumed.fit(progress=False)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for a, b in zip(full_rows, rows):  # CPU: the same operations in the same order
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-6)
        assert a["valid_neg_elbo_per_step"] == pytest.approx(b["valid_neg_elbo_per_step"], rel=1e-6, abs=1e-6)
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("sig") / "d.npz"
    g = np.random.default_rng(1)
    np.savez(path, obs=g.standard_normal((40, 31, 2)).astype(np.float32),
             actions=g.standard_normal((40, 30, 1)).astype(np.float32))
    return str(path)


def _eval_ok(run):
    p = subprocess.run(DVAE + ["eval", run, "--split", "valid"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert np.isfinite(json.loads(p.stdout)["neg_elbo_per_step"])


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path, npz):
    run = str(tmp_path / "run")
    proc = subprocess.Popen(DVAE + ["train", "--data", npz, *TINY, "--epochs", "1000", "--out", run],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not os.path.exists(os.path.join(run, "metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    assert json.loads(out)["interrupted"] is True
    _eval_ok(run)
    p = subprocess.run(DVAE + ["train", "--resume", run, "--epochs", "3", "--no-progress"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_sigkill_at_random_moments_leaves_a_run_that_evaluates_and_resumes(tmp_path, npz):
    rng = random.Random(0)
    for trial in range(2):
        run = str(tmp_path / f"run{trial}")
        proc = subprocess.Popen(DVAE + ["train", "--data", npz, *TINY, "--epochs", "1000", "--out", run],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(run, "checkpoint.pt")) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 3.0))
        proc.kill()
        proc.wait()
        _eval_ok(run)
        done = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)["state"]["epoch"]
        p = subprocess.run(DVAE + ["train", "--resume", run, "--epochs", str(done + 1), "--no-progress"],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
        assert [r["epoch"] for r in rows] == list(range(1, done + 2))  # metrics repaired and continued
        _eval_ok(run)
