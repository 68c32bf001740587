"""The step-by-step world model agrees with the models' own open-loop predictions, and `dvae plan`
runs end to end."""

import json

import numpy as np
import pyro
import pytest
import torch

from dvae.cli import main
from dvae.data import Normalizer, collate
from dvae.models import ModelConfig, build_model
from dvae.world_model import WorldModel


@pytest.mark.parametrize("family", ["dmm", "vrnn", "vrae", "lgssm", "vae", "storn", "srnn", "rssm", "dsae", "kvae"])
def test_world_model_rollouts_match_predict_in_distribution(family):
    torch.manual_seed(0)
    m = build_model(ModelConfig(family, x_dim=2, u_dim=1, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    norm = Normalizer([1.0, -1.0], [2.0, 0.5], [0.0], [1.0])
    g = np.random.default_rng(0)
    x = g.standard_normal((6, 2)).astype(np.float32) * [2.0, 0.5] + [1.0, -1.0]
    u = g.standard_normal((9, 1)).astype(np.float32)
    S, H = 4000, 3
    pyro.set_rng_seed(1)
    world = WorldModel(m, norm, sample=True)
    world.reset(x, u[:5], num_samples=S)
    imagined = world.imagine(torch.from_numpy(u[5:5 + H])[None].expand(S, -1, -1))  # (S, H, 2)
    ctx = collate([torch.from_numpy(np.stack(norm.x([x]))[0])], [torch.from_numpy(np.concatenate([u[:5], u[5:6]]))])
    pred = m.predict(ctx, torch.from_numpy(u[5:5 + H])[None], H, num_samples=S)
    pred_x = norm.x_inverse(pred["x"][:, 0])  # (S, H, 2)
    se = (imagined.std(0) ** 2 / S + pred_x.std(0) ** 2 / S).sqrt()
    assert ((imagined.mean(0) - pred_x.mean(0)).abs() < 5 * se + 1e-3).all()
    assert ((imagined.std(0) - pred_x.std(0)).abs() < 0.1 * pred_x.std(0) + 1e-3).all()


class HostReads:
    """Counts, while active, the reads of tensor values back to the host (``aten._local_scalar_dense``:
    every .item(), float(), bool() of a tensor; a device synchronisation on a GPU) and the tensors built
    from host data (``aten.lift_fresh``)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counts = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func)
                counts.reads += "_local_scalar_dense" in name
                counts.lifts += "lift_fresh" in name
                return func(*args, **(kwargs or {}))

        self.reads = self.lifts = 0
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


@pytest.mark.parametrize("family", ["dmm", "vrnn", "vrae", "lgssm", "vae"])
def test_an_imagined_step_reads_nothing_back_and_builds_one_tensor_the_action(family):
    from dvae.infer.smc import model_particle_filter

    torch.manual_seed(0)
    m = build_model(ModelConfig(family, x_dim=3, u_dim=1, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    world = WorldModel(m, Normalizer([0.0] * 3, [2.0] * 3, [0.0], [1.0]))
    world.reset(np.zeros((4, 3), np.float32), np.zeros((3, 1), np.float32), num_samples=5)
    u = np.zeros((5, 1), np.float32)
    with HostReads() as c:
        world.step(u)
    assert (c.reads, c.lifts) == (0, 1)
    batch = collate([torch.randn(6, 3)], [torch.randn(6, 1)])
    with HostReads() as c:
        model_particle_filter(m, batch, 10)
    assert c.reads <= 6  # the resampling decision: at most one read per time step


@pytest.mark.parametrize("family", ["dmm", "vrnn", "lgssm"])
def test_a_world_model_without_sampling_is_deterministic(family):
    """sample=False takes the mean of the latent's and of the observation's distribution at each step:
    two rollouts from one state agree whatever the random stream."""
    torch.manual_seed(0)
    m = build_model(ModelConfig(family, x_dim=3, u_dim=1, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    world = WorldModel(m, Normalizer([0.0] * 3, [1.0] * 3, [0.0], [1.0]), sample=False)
    world.reset(np.zeros((4, 3), np.float32), np.zeros((3, 1), np.float32), num_samples=3)
    start = world.save()
    actions = torch.randn(3, 4, 1)
    torch.manual_seed(1)
    a = world.imagine(actions)
    world.restore(start)
    torch.manual_seed(2)
    torch.testing.assert_close(world.imagine(actions), a, rtol=0, atol=0)


def test_plan_runs_the_model_and_both_baselines(capsys, tmp_path):
    assert main(["train", "--episodes", "8", "--steps", "16", "--epochs", "1", "--z-dim", "2", "--rnn-dim", "8",
                 "--transition-dim", "8", "--emission-dim", "8", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    code = main(["plan", str(tmp_path / "r"), "--env", "Pendulum-v1", "--episodes", "2", "--max-steps", "6",
                 "--horizon", "4", "--num-samples", "20", "--iterations", "2"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and len(out["returns"]) == 2 and np.isfinite(out["mean_return"])
    assert set(out["baselines"]) == {"random", "true_model"} and "normalized_return" in out


def test_plan_refuses_an_env_without_a_known_reward(capsys, tmp_path):
    code = main(["plan", str(tmp_path), "--env", "CartPole-v1"])
    err = capsys.readouterr().err
    assert code != 0 and "no known reward function for 'CartPole-v1'" in err


def test_plan_saves_its_real_episodes_as_trajectories(capsys, tmp_path):
    import gymnasium as gym

    from dvae.data.datasets import load_npz

    assert main(["train", "--episodes", "8", "--steps", "16", "--epochs", "1", "--z-dim", "2", "--rnn-dim", "8",
                 "--transition-dim", "8", "--emission-dim", "8", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    saved = tmp_path / "episodes.npz"
    assert main(["plan", str(tmp_path / "r"), "--env", "Pendulum-v1", "--episodes", "3", "--max-steps", "7",
                 "--horizon", "3", "--num-samples", "10", "--iterations", "1", "--no-baselines", "--seed", "5",
                 "--save-episodes", str(saved)]) == 0
    out = json.loads(capsys.readouterr().out)
    raw = np.load(saved)
    assert raw["obs"].shape == (3, 8, 3) and raw["actions"].shape == (3, 7, 1) and raw["lengths"].tolist() == [7] * 3
    np.testing.assert_allclose(raw["rewards"].sum(1), out["returns"], rtol=1e-5)  # the rewards of those episodes
    env = gym.make("Pendulum-v1")
    for i in range(3):  # episode i starts from reset(seed=seed + i)
        np.testing.assert_allclose(raw["obs"][i, 0], env.reset(seed=5 + i)[0], rtol=1e-6)
    data = load_npz(str(saved))  # and it trains like any trajectory file
    assert len(data.xs) == 3 and data.u_dim == 1
