"""The CUDA path on a real GPU (marked ``cuda``, skipped without one; ``bench/gpu_check.sh`` runs them):
exact resume with the CUDA random state, the host-read budgets counted where each read is a real
synchronisation, the fused shared Adam, pinned non-blocking copies, masks on the device, and the
world-model env leaving the caller's CUDA stream alone. docs/performance.md ("CUDA") says what to
expect."""


import numpy as np
import pyro
import pytest
import torch

from bench.host_reads import count_update, count_validation, optimizer_counters, tiny_trainer
from dvae.data import collate
from tests.conftest import run_cli as run
from tests.infer.test_resume_devices import train_and_resume, traj  # noqa: F401  (traj: the same fixture)

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def _on_cuda(family):
    return tiny_trainer(family, device=CUDA)  # the trainer's CUDA choices: fused shared Adam, resident data


def test_train_2_and_resume_to_4_equals_training_4_on_cuda(capsys, tmp_path, traj):
    full, part = train_and_resume(capsys, tmp_path, traj, "--device", "cuda")
    for name in ("full", "part"):  # the checkpoints hold the CUDA random state (the resumed run read part's)
        ckpt = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
        assert ckpt["rng_cuda"] is not None and len(ckpt["rng_cuda"]) == torch.cuda.device_count()
    assert [r["epoch"] for r in part] == [1, 2, 3, 4]
    for a, b in zip(full, part):  # the same draws; cuDNN's kernels may sum in another order: near-equal
        for key in ("train_loss", "valid_neg_elbo_per_step", "valid_kl_per_step"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["epoch"], key)


def test_a_resumed_trainer_continues_the_cuda_stream():
    t = _on_cuda("dmm")
    pyro.set_rng_seed(1)
    t.fit(progress=False)
    ckpt = t.checkpoint()
    expected = torch.randn(5, device=CUDA)
    pyro.set_rng_seed(1)
    t2 = _on_cuda("dmm")
    t2.load_checkpoint(ckpt)
    assert torch.equal(torch.randn(5, device=CUDA), expected)


@pytest.mark.parametrize("family", ["dmm", "vrnn", "vrae", "vae", "lgssm"])
def test_the_read_budgets_hold_where_reads_are_synchronisations(family):
    t = _on_cuda(family)
    h = count_update(t)
    assert h.reads <= 1 and h.host_reads == 0, h.where  # fused Adam: no counter on the host either
    assert optimizer_counters(t.optim) == []
    assert count_validation(t).reads <= 2


def test_a_resumed_run_keeps_the_fused_adams_counters_with_the_parameters(tmp_path):
    t = _on_cuda("dmm")
    t.train_epoch()
    torch.save(t.checkpoint(), tmp_path / "c.pt")
    t2 = _on_cuda("dmm")
    t2.load_checkpoint(torch.load(tmp_path / "c.pt", map_location="cpu", weights_only=True))
    t2.train_epoch()
    steps = [s["step"] for s in t2.optim.shared.state.values()]
    assert steps and all(s.device.type == "cuda" for s in steps)


def test_shared_fused_adam_on_cuda_makes_pyros_updates():
    from dvae.infer import DynamicalELBO
    from dvae.infer.optim import SharedAdam
    from dvae.infer.svi import ClippedSVI
    from dvae.models import ModelConfig, build_model

    def train(optim):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model = build_model(ModelConfig("dmm", x_dim=3, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8)).to(CUDA)
        svi = ClippedSVI(*model.programs(vectorized=True), optim, DynamicalELBO(), clip_norm=10.0)
        g = torch.Generator().manual_seed(0)
        batch = collate([torch.randn(n, 3, generator=g) for n in (5, 3, 4)]).to(CUDA)
        for k in range(5):
            pyro.set_rng_seed(k)
            svi.step(batch, 1.0)
        return model.state_dict()

    a, b = train(pyro.optim.Adam({"lr": 1e-2})), train(SharedAdam({"lr": 1e-2}, fused=True))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_a_host_collated_batch_moves_through_pinned_memory():
    g = torch.Generator().manual_seed(0)
    batch = collate([torch.randn(n, 3, generator=g) for n in (5, 3)])
    assert batch.pin_memory().x.is_pinned()
    moved = batch.to_device(CUDA)
    torch.cuda.synchronize()
    assert moved.x.device.type == "cuda" and torch.equal(moved.x.cpu(), batch.x)
    assert torch.equal(moved.mask.cpu(), batch.mask)


def test_a_masked_out_path_gets_its_mask_on_the_gpu():
    from pyro.distributions import MaskedDistribution

    from dvae.models.paths import GuidePath, as_path

    loc = torch.zeros(2, 5, 3, device=CUDA)
    _, mask = as_path(MaskedDistribution(GuidePath(loc, torch.ones_like(loc), loc), False))
    assert mask.device.type == "cuda"


def test_the_world_model_env_on_cuda_leaves_the_callers_cuda_stream(capsys, tmp_path, traj):
    import gymnasium as gym

    import envs  # noqa: F401

    assert run(capsys, "train", "--episodes", "8", "--steps", "16", "--epochs", "1", "--z-dim", "2", "--rnn-dim", "8",
               "--transition-dim", "8", "--emission-dim", "8", "--no-progress", "--no-plots",
               "--out", tmp_path / "wm")[0] == 0
    env = gym.make("dvae/WorldModel-v0", run_dir=str(tmp_path / "wm"), env_id="Pendulum-v1", device="cuda")
    torch.cuda.manual_seed(5)
    state = torch.cuda.get_rng_state()
    env.reset(seed=0)
    first = [env.step(np.array([0.5], np.float32))[0] for _ in range(3)]
    assert torch.equal(torch.cuda.get_rng_state(), state)
    env.reset(seed=0)
    again = [env.step(np.array([0.5], np.float32))[0] for _ in range(3)]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
