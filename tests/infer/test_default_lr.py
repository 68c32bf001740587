"""The default learning rate is chosen per model family: ``TrainConfig(lr=None)`` resolves to
``DEFAULT_LR[family]`` in the Trainer (which records the number it used) and in ``dvae train`` (which
writes it to config.json); an explicit rate is kept."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dvae.data import Normalizer
from dvae.infer.trainer import DEFAULT_LR, OTHER_LR, TrainConfig, Trainer, default_lr
from dvae.models import ModelConfig, build_model
from dvae.run import DataConfig, RunConfig


def _xs(n=8, length=6, seed=0):
    g = np.random.default_rng(seed)
    return [g.standard_normal((length, 2)).astype(np.float32) for _ in range(n)]


def _optimizer_lrs(trainer):
    return {g["lr"] for opt in trainer.optim.optim_objs.values() for g in opt.param_groups}


@pytest.mark.parametrize("family", ["dmm", "vrnn", "vrae", "lgssm", "vae"])
def test_the_trainer_uses_and_records_the_family_default(family):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family, x_dim=2, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    xs = _xs()
    config = TrainConfig(epochs=1, batch_size=4, patience=0)
    assert config.lr is None
    trainer = Trainer(model, config, (xs, None), (xs[:4], None))
    assert trainer.config.lr == DEFAULT_LR[family] == default_lr(family)
    assert config.lr is None  # the caller's config is not modified
    trainer.fit(progress=False)
    assert _optimizer_lrs(trainer) == {DEFAULT_LR[family]}


def test_an_explicit_rate_is_kept_and_other_models_get_the_generic_default():
    torch.manual_seed(0)
    model = build_model(ModelConfig("vrnn", x_dim=2, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    xs = _xs()
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=4, patience=0, lr=0.0123), (xs, None), (xs[:4], None))
    trainer.fit(progress=False)
    assert trainer.config.lr == 0.0123 and _optimizer_lrs(trainer) == {0.0123}
    assert default_lr("my_own_model") == OTHER_LR


def test_a_null_rate_in_a_run_config_is_valid_and_a_bad_one_is_not():
    norm = Normalizer(x_mean=[0.0, 0.0], x_std=[1.0, 1.0])
    assert RunConfig(ModelConfig("dmm", x_dim=2), TrainConfig(lr=None), DataConfig(), norm).problem() is None
    problem = RunConfig(ModelConfig("dmm", x_dim=2), TrainConfig(lr=-1.0), DataConfig(), norm).problem()
    assert problem is not None and problem.startswith("train.lr"), problem


@pytest.mark.parametrize("flags, family, expected", [
    ([], "vrae", DEFAULT_LR["vrae"]),
    ([], "vrnn", DEFAULT_LR["vrnn"]),
    (["--lr", "0.004"], "vrae", 0.004),
])
def test_dvae_train_writes_the_rate_it_used(tmp_path, flags, family, expected):
    data = tmp_path / "d.npz"
    g = np.random.default_rng(0)
    np.savez(data, obs=g.standard_normal((10, 7, 2)).astype(np.float32),
             actions=g.standard_normal((10, 6, 1)).astype(np.float32))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dvae.cli", "train", "--model", family, "--data", str(data),
                           "--epochs", "1", "--z-dim", "2", "--rnn-dim", "8", "--transition-dim", "8",
                           "--emission-dim", "8", "--batch-size", "4", "--no-progress", "--no-plots",
                           "--out", str(out)] + flags, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["lr"] == expected
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert rows and all(r["lr"] == pytest.approx(expected) for r in rows)
