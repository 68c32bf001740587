"""Exact resume on every device: a checkpoint holds the CUDA random state with the CPU one and a resumed
run continues both streams (a stand-in CUDA generator on the CPU shows it without a GPU); on the CPU a
run trained 2 epochs and resumed to 4 gives the metrics of a run trained 4 epochs in one go."""

import json

import numpy as np
import pyro
import pytest
import torch

from dvae.infer import rng
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model
from tests.conftest import run_cli as run, write_random_walks


class FakeCuda:
    """One CUDA device whose generator is a CPU ``torch.Generator``: ``torch.manual_seed`` (and so
    ``pyro.set_rng_seed``) reseeds it through ``torch.cuda.manual_seed_all``, as on a GPU, and the
    ``torch.cuda`` RNG-state calls read and write it."""

    def __init__(self, monkeypatch):
        self.gen = torch.Generator()
        self.restored = 0
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: 1)
        monkeypatch.setattr(cuda, "manual_seed_all", lambda seed: self.gen.manual_seed(seed))
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [self.gen.get_state()])
        monkeypatch.setattr(cuda, "set_rng_state_all", self._set)

    def _set(self, states):
        assert len(states) == 1 and states[0].dtype == torch.uint8 and states[0].device.type == "cpu"
        self.gen.set_state(states[0])
        self.restored += 1

    def draws(self, n=4):
        """What a sampling site on the device would draw next."""
        return torch.randn(n, generator=self.gen)


def _trainer(epochs=1):
    torch.manual_seed(0)
    model = build_model(ModelConfig("dmm", x_dim=2, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    g = np.random.default_rng(0)
    xs = [g.standard_normal((6, 2)).astype(np.float32) for _ in range(8)]
    return Trainer(model, TrainConfig(epochs=epochs, batch_size=4, patience=0), (xs, None), (xs[:4], None))


def test_a_resumed_run_continues_the_cuda_stream_instead_of_replaying_it(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    pyro.set_rng_seed(3)  # as `dvae train` does before building the trainer
    part = _trainer()
    part.fit(progress=False)
    cuda.draws(10)  # the run's draws on the device so far
    ckpt = part.checkpoint()
    torch.save(ckpt, "/dev/null")  # plain tensors and containers
    expected = cuda.draws()  # what the uninterrupted run draws next on the device
    cpu_expected = torch.randn(4)

    pyro.set_rng_seed(3)  # a resumed `dvae train` reseeds from the run's seed first (the CUDA stream too) ...
    resumed = _trainer()
    resumed.load_checkpoint(ckpt)  # ... and the checkpoint puts both streams back where they were
    assert cuda.restored == 1
    torch.testing.assert_close(cuda.draws(), expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.randn(4), cpu_expected, rtol=0, atol=0)


def test_capture_holds_no_cuda_state_where_cuda_was_never_used_and_restore_reads_old_checkpoints():
    state = rng.capture()
    assert state["rng_cuda"] is None or torch.cuda.is_initialized()
    torch.manual_seed(5)
    old_style = torch.get_rng_state()  # a checkpoint's "rng" before rng_cuda existed, or a rank's entry
    a = torch.randn(3)
    torch.randn(7)
    rng.restore(old_style)
    torch.testing.assert_close(torch.randn(3), a, rtol=0, atol=0)
    rng.restore({"rng": old_style})  # a checkpoint without the rng_cuda key
    torch.testing.assert_close(torch.randn(3), a, rtol=0, atol=0)


@pytest.fixture(scope="module")
def traj(tmp_path_factory):
    return write_random_walks(tmp_path_factory.mktemp("data"))


def train_and_resume(capsys, tmp_path, traj, *extra):
    """``dvae train`` of 4 epochs in one go (``tmp_path/full``) and of 2 resumed to 4 (``tmp_path/part``),
    with ``extra`` flags (``--device cuda``): the two runs' metrics rows."""
    args = ["train", "--data", traj, "--z-dim", "2", "--rnn-dim", "8", "--transition-dim", "8", "--emission-dim", "8",
            "--batch-size", "4", "--seed", "0", "--no-progress", "--no-plots", "--patience", "0", *extra]
    assert run(capsys, *args, "--epochs", "4", "--out", tmp_path / "full")[0] == 0
    assert run(capsys, *args, "--epochs", "2", "--out", tmp_path / "part")[0] == 0
    code, _, err = run(capsys, "train", "--resume", tmp_path / "part", "--epochs", "4", "--no-progress", "--no-plots")
    assert code == 0, err
    return tuple([json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")] for name in ("full", "part"))


def test_train_2_epochs_and_resume_to_4_equals_training_4(capsys, tmp_path, traj):
    full, part = train_and_resume(capsys, tmp_path, traj)
    assert [r["epoch"] for r in part] == [1, 2, 3, 4]
    for a, b in zip(full, part):  # CPU: the same operations in the same order give the same numbers
        for key in a:
            if key != "epoch_seconds":
                assert a[key] == b[key], (a["epoch"], key)
    ca = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    for name in ca["model"]:
        torch.testing.assert_close(ca["model"][name], cb["model"][name], rtol=0, atol=0)
    torch.testing.assert_close(ca["rng"], cb["rng"], rtol=0, atol=0)
