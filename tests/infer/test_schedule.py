"""The learning-rate schedule (reduce on plateau), convergence and the epoch cap.

Oracles: a scripted sequence of validation bounds whose rates, reductions and stopping epoch are worked
out by hand; a pure-Python replay of the schedule on the bounds a real run recorded (every family);
train N epochs + resume M equals N + M epochs, rows and parameters; the command line's defaults and
range checks.
"""

import copy
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dvae.data import Normalizer
from dvae.infer.trainer import DEFAULT_EPOCHS, TrainConfig, Trainer
from dvae.models import ModelConfig, build_model
from dvae.run import DataConfig, RunConfig, RunDirError

FAMILIES = ["dmm", "vrnn", "vrae", "vae", "lgssm"]


def _xs(n=8, length=6, seed=0):
    g = np.random.default_rng(seed)
    return [g.standard_normal((length, 2)).astype(np.float32) for _ in range(n)]


def _trainer(family="dmm", n=4, **kw):
    """A tiny run (``n`` sequences, batches of 2); validated on other noise than it trains on, so that a
    high rate meets plateaus. Plateaus in epochs alone unless ``plateau_updates`` is given."""
    torch.manual_seed(0)
    # bidirectional=False: the DMM these seeded runs were chosen with (its plateaus are what the tests need)
    model = build_model(ModelConfig(family, x_dim=2, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8,
                                    bidirectional=False))
    return Trainer(model, TrainConfig(**{"batch_size": 2, "plateau_updates": 0, **kw}), (_xs(n, seed=0), None),
                   (_xs(4, seed=1), None))


def _live_rates(trainer):
    return sorted({g["lr"] for opt in trainer.optim.optim_objs.values() for g in opt.param_groups})


def _script(trainer, values):
    """Replace validation by the scripted bounds, one per epoch."""
    it = iter(values)

    def validate():
        v = next(it)
        return {"neg_elbo_per_step": v, "recon_per_step": v, "kl_per_step": 1.0}

    trainer.validate = validate


def test_a_scripted_plateau_reduces_the_rate_as_worked_out_by_hand_then_converges_and_restores_the_best():
    t = _trainer(lr=0.01, lr_factor=0.5, lr_patience=2, min_lr=0.0025, patience=2)
    #        ep: 1  2  3    4    5    6    7    8    9    10   (11 and on: never reached)
    _script(t, [5, 4, 4.5, 4.6, 4.7, 3.9, 4.0, 4.1, 4.2, 4.3, 1.0, 1.0])
    kept = {}

    def on_epoch(row, improved):
        if improved:
            kept[row["epoch"]] = copy.deepcopy(t.model.state_dict())

    rows = t.fit(on_epoch, progress=False)
    # epochs 3-4 without improvement: halved after epoch 4; 7-8: halved to the floor after epoch 8; at
    # the floor, epochs 9 and 10 without improvement: patience 2 reached, converged after epoch 10
    assert [r["lr"] for r in rows] == pytest.approx([0.01] * 4 + [0.005] * 4 + [0.0025] * 2)
    assert t.state["stop_reason"] == "converged" and t.state["lr_reductions"] == 2
    assert t.state["best_epoch"] == 6 and _live_rates(t) == pytest.approx([0.0025])
    for name, value in t.model.state_dict().items():  # the best parameters, restored
        torch.testing.assert_close(value, kept[6][name])
    assert t.converged() and t.fit(progress=False) == rows  # a converged run trains no further


def test_a_plateau_spans_plateau_updates_updates_as_worked_out_by_hand():
    # 3 batches an epoch (6 sequences, batches of 2): lr_patience 1 epoch, but a plateau needs 7 updates
    # (3 epochs) since the last better bound or the last reduction; at the floor, patience 1 epoch and
    # again 7 updates
    t = _trainer(n=6, lr=0.01, lr_factor=0.5, lr_patience=1, min_lr=0.0025, patience=1, plateau_updates=7)
    assert t.batches_per_epoch == 3
    #        ep: 1  2  3    4    5    6    7    8    9    10   11   12   13   14   (15: never reached)
    _script(t, [5, 4, 4.1, 4.2, 3.9, 4.0, 4.1, 4.2, 4.3, 4.4, 4.5, 4.6, 4.7, 4.8, 1.0])
    rows = t.fit(progress=False)
    # epoch 2 improves at update 6; epochs 3 and 4 end at updates 9 and 12 (3 and 6 since): no reduction;
    # epoch 5 improves (update 15); epochs 6, 7 end 3 and 6 updates after it, epoch 8 9 after: halved
    # (update 24); epochs 9, 10, 11 end 3, 6, 9 updates after the reduction: halved to the floor after
    # epoch 11 (update 33); at the floor, epoch 12 is 3 updates after it: not yet (patience alone would
    # stop here); epoch 13 (6): not yet; epoch 14 (9 updates): converged
    assert [r["lr"] for r in rows] == pytest.approx([0.01] * 8 + [0.005] * 3 + [0.0025] * 3)
    assert t.state["stop_reason"] == "converged" and t.state["lr_reductions"] == 2 and t.state["best_epoch"] == 5


def _replay_updates(values, updates_per_epoch, lr, factor, patience, min_lr, plateau_updates, stop_patience):
    """The schedule with plateau_updates, replayed by a plain loop: (the rate of each epoch, the epoch
    early stopping ends after or None)."""
    rates, best, bad, stale, since, step = [], float("inf"), 0, 0, 0, 0
    for epoch, v in enumerate(values, 1):
        rates.append(lr)
        step += updates_per_epoch
        since += updates_per_epoch
        if v < best:
            best, bad, stale, since = v, 0, 0, 0
        elif lr <= min_lr * (1 + 1e-9):
            stale += 1
        else:
            bad += 1
            if bad >= patience and since >= plateau_updates:
                lr, bad, since = max(lr * factor, min_lr), 0, 0
        if stop_patience and stale >= stop_patience and since >= plateau_updates:
            return rates, epoch
    return rates, None


@pytest.mark.parametrize("plateau_updates", [0, 4, 9])
def test_the_trainer_follows_a_replay_of_the_rule_on_the_bounds_it_recorded(plateau_updates):
    t = _trainer(n=6, lr=0.2, lr_factor=0.3, lr_patience=1, min_lr=0.001, patience=2, epochs=10,
                 plateau_updates=plateau_updates)
    rows = t.fit(progress=False)
    rates, stop = _replay_updates([r["valid_neg_elbo_per_step"] for r in rows], 3, 0.2, 0.3, 1, 0.001,
                                  plateau_updates, 2)
    assert [r["lr"] for r in rows] == pytest.approx(rates)
    assert t.state["stop_reason"] == ("epochs" if stop is None else "converged")
    assert len(rows) == (10 if stop is None else stop)
    assert t.state["lr_reductions"] >= 1, [r["valid_neg_elbo_per_step"] for r in rows]  # the schedule acted
    if plateau_updates:  # and waited: no two reductions closer than plateau_updates updates (3 an epoch)
        changes = [i for i in range(1, len(rows)) if rows[i]["lr"] != rows[i - 1]["lr"]]
        assert all(3 * (b - a) >= plateau_updates for a, b in zip(changes, changes[1:]))


def test_without_a_schedule_the_rate_is_constant_and_patience_counts_from_the_best_epoch():
    t = _trainer(lr=0.01, lr_schedule="none", patience=2)
    _script(t, [5, 4, 4.5, 4.6, 1.0])
    rows = t.fit(progress=False)
    assert [r["lr"] for r in rows] == [0.01] * 4 and t.state["stop_reason"] == "converged"


def test_patience_0_never_stops_and_the_epoch_cap_does():
    t = _trainer(lr=0.01, lr_patience=1, min_lr=0.005, patience=0, epochs=5)
    _script(t, [5, 6, 6, 6, 6])
    rows = t.fit(progress=False)
    assert [r["lr"] for r in rows] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.005])
    assert t.state["stop_reason"] == "epochs"


def test_no_epoch_cap_with_a_time_limit():
    t = _trainer(epochs=None, time_limit=1.0, patience=0)
    rows = t.fit(progress=False)
    assert rows and t.state["stop_reason"] == "time_limit"


def _replay(values, lr, factor, patience, min_lr):
    """The schedule, replayed by a plain loop on recorded validation bounds: the rate of each epoch."""
    rates, best, bad = [], float("inf"), 0
    for v in values:
        rates.append(lr)
        if v < best:
            best, bad = v, 0
        elif lr > min_lr * (1 + 1e-9):
            bad += 1
            if bad >= patience:
                lr, bad = max(lr * factor, min_lr), 0
    return rates


@pytest.mark.parametrize("family", FAMILIES)
def test_the_schedule_runs_on_every_family_and_every_row_records_its_rate(family):
    t = _trainer(family, lr=0.2, lr_factor=0.3, lr_patience=1, min_lr=0.001, patience=0, epochs=8)
    rows = t.fit(progress=False)
    assert len(rows) == 8 and all("lr" in r for r in rows)
    expected = _replay([r["valid_neg_elbo_per_step"] for r in rows], 0.2, 0.3, 1, 0.001)
    assert [r["lr"] for r in rows] == pytest.approx(expected)
    assert t.state["lr_reductions"] >= 1, [r["valid_neg_elbo_per_step"] for r in rows]  # the schedule acted
    assert _live_rates(t) == pytest.approx([t.lr])  # the optimiser runs at the rate the trainer states


@pytest.mark.parametrize("family", ["dmm", "vrnn"])
def test_train_n_then_resume_m_equals_n_plus_m_with_the_schedule(family):
    settings = dict(lr=0.2, lr_factor=0.3, lr_patience=1, min_lr=0.001, patience=0)
    full = _trainer(family, epochs=8, **settings)
    full_rows = full.fit(progress=False)
    part = _trainer(family, epochs=6, **settings)
    part.fit(progress=False)
    ckpt = copy.deepcopy(part.checkpoint())
    resumed = _trainer(family, epochs=8, **settings)
    resumed.load_checkpoint(ckpt)
    rows = resumed.fit(progress=False)
    assert full_rows[6]["lr"] < 0.2 and part.state["lr_reductions"] >= 1  # the checkpoint holds a reduced rate
    assert len(rows) == len(full_rows) == 8
    for a, b in zip(full_rows, rows):  # CPU: the same operations in the same order
        a, b = dict(a), dict(b)
        a.pop("epoch_seconds"), b.pop("epoch_seconds")
        assert a == b
    assert resumed.state["lr_reductions"] == full.state["lr_reductions"]
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def _run_config(**train):
    return RunConfig(ModelConfig("dmm", x_dim=2), TrainConfig(**train), DataConfig(),
                     Normalizer(x_mean=[0.0, 0.0], x_std=[1.0, 1.0]))


@pytest.mark.parametrize("train, key", [
    ({"lr_factor": 1.0}, "train.lr_factor"),
    ({"lr_factor": 0.0}, "train.lr_factor"),
    ({"lr_patience": 0}, "train.lr_patience"),
    ({"plateau_updates": -1}, "train.plateau_updates"),
    ({"min_lr": -1e-4}, "train.min_lr"),
    ({"lr_schedule": "cosine"}, "train.lr_schedule"),
    ({"epochs": 0}, "train.epochs"),
    ({"epochs": None, "patience": 0}, "train.epochs"),
    ({"time_limit": -5.0}, "train.time_limit"),
    ({"objective": "tmc"}, "train.objective"),
    ({"train_samples": 0}, "train.train_samples"),
    ({"objective": "iwae", "beta": 0.5}, "train.beta"),
])
def test_config_range_checks_name_the_field(train, key):
    problem = _run_config(**train).problem()
    assert problem is not None and problem.startswith(key + " = "), problem


def test_a_valid_config_round_trips_and_an_old_one_keeps_a_constant_rate():
    config = _run_config(epochs=None, time_limit=30.0)
    assert config.problem() is None
    d = config.to_dict()
    assert RunConfig.from_dict(json.loads(json.dumps(d))).train == config.train
    old = copy.deepcopy(d)
    for key in ("lr_schedule", "lr_factor", "lr_patience", "min_lr", "objective", "train_samples", "plateau_updates"):
        del old["train"][key]
    assert RunConfig.from_dict(old).train.lr_schedule == "none"  # a run written before the schedule
    assert RunConfig.from_dict(old).train.plateau_updates == 0  # and before plateau_updates: epochs alone
    bad = copy.deepcopy(d)
    bad["train"]["lr_factor"] = 2.0
    with pytest.raises(RunDirError, match=r"cfg.json: train.lr_factor = 2.0: expected in \(0, 1\)"):
        RunConfig.from_dict(bad, "cfg.json")


def _configs(argv):
    from dvae.cli import build_parser
    from dvae.fitting import train_configs

    a = build_parser().parse_args(["train"] + argv)
    data = SimpleNamespace(kind="continuous", x_dim=2, u_dim=0, c_dim=0, meta={})
    return train_configs(a, data)[1]


def test_the_command_line_epoch_defaults_and_flags():
    assert _configs([]).epochs == DEFAULT_EPOCHS  # neither flag: a finite default
    assert _configs(["--time-limit", "300"]).epochs is None  # a time limit alone: no cap
    assert _configs(["--time-limit", "300", "--epochs", "7"]).epochs == 7
    c = _configs(["--lr-schedule", "none", "--lr-factor", "0.2", "--lr-patience", "4", "--min-lr", "1e-5",
                  "--objective", "iwae", "--train-samples", "8", "--plateau-updates", "50"])
    assert (c.lr_schedule, c.lr_factor, c.lr_patience, c.min_lr, c.objective, c.train_samples, c.plateau_updates) == \
        ("none", 0.2, 4, 1e-5, "iwae", 8, 50)
    assert _configs([]).lr_schedule == "plateau"


def test_help_lines_state_the_defaults_and_a_bad_value_is_one_line():
    text = subprocess.run([sys.executable, "-m", "dvae.cli", "train", "--help"], capture_output=True, text=True,
                          timeout=120).stdout
    flat = " ".join(text.split())
    tc = TrainConfig()
    for fragment in (f"(default {tc.lr_schedule})", f"(default {tc.lr_factor:g})", f"(default {tc.lr_patience})",
                     f"(default {tc.min_lr:g})", f"(default {tc.patience})", f"(default {tc.plateau_updates})", f"(default {tc.objective})",
                     f"(default {tc.train_samples})", f"without it {DEFAULT_EPOCHS})"):
        assert fragment in flat, fragment
    proc = subprocess.run([sys.executable, "-m", "dvae.cli", "train", "--lr-factor", "1.5", "--epochs", "1",
                           "--out", "/nonexistent/never"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "--lr-factor = 1.5: expected in (0, 1)" in proc.stderr and "Traceback" not in proc.stderr
