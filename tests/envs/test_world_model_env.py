import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401
from dvae.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("wm") / "run"
    assert main(["train", "--episodes", "8", "--steps", "16", "--epochs", "1", "--z-dim", "2", "--rnn-dim", "8",
                 "--transition-dim", "8", "--emission-dim", "8", "--no-progress", "--out", str(d)]) == 0
    return str(d)


def test_world_model_env_passes_check_env_and_is_seeded(run_dir):
    env = gym.make("dvae/WorldModel-v0", run_dir=run_dir, env_id="Pendulum-v1")
    check_env(env.unwrapped, skip_render_check=True)
    trajs = []
    for seed in (0, 0, 1):
        obs, _ = env.reset(seed=seed)
        seq = [obs]
        for a in np.linspace(-2, 2, 5, dtype=np.float32):
            obs, r, term, trunc, _ = env.step(np.array([a]))
            seq.append(obs)
            assert np.isfinite(r) and obs.shape == (3,)
        trajs.append(np.stack(seq))
    np.testing.assert_array_equal(trajs[0], trajs[1])
    assert not np.array_equal(trajs[0], trajs[2])


def test_world_model_env_reward_is_the_known_one_of_the_obs_acted_in(run_dir):
    from envs.rewards import pendulum_reward

    env = gym.make("dvae/WorldModel-v0", run_dir=run_dir, env_id="Pendulum-v1", sample=False)
    obs, _ = env.reset(seed=0, options={"history": (np.array([[1.0, 0.0, 0.0], [0.99, 0.1, 0.5]], np.float32),
                                                     np.array([[0.3]], np.float32))})
    np.testing.assert_allclose(obs, [0.99, 0.1, 0.5], rtol=1e-6)
    _, r, *_ = env.step(np.array([1.0], np.float32))
    assert r == pytest.approx(float(pendulum_reward(obs[None], np.array([[1.0]]))[0]), rel=1e-5)


def test_world_model_vector_env_runs_batched_rollouts(run_dir):
    venv = gym.make_vec("dvae/WorldModel-v0", num_envs=5, vectorization_mode="vector_entry_point",
                        run_dir=run_dir, env_id="Pendulum-v1", max_episode_steps=3)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (5, 3)
    for t in range(3):
        obs, r, term, trunc, _ = venv.step(venv.action_space.sample())
        assert obs.shape == (5, 3) and r.shape == (5,)
    assert trunc.all()


def test_the_envs_seeded_steps_leave_the_callers_cuda_stream_as_it_was(run_dir, monkeypatch):
    """The env seeds torch from its own np_random at every step; a caller drawing on CUDA (a stand-in
    generator on the CPU, reseeded by torch.manual_seed as a GPU's is) continues its own stream."""
    import torch

    gen = torch.Generator().manual_seed(11)
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(cuda, "device_count", lambda: 1)
    monkeypatch.setattr(cuda, "manual_seed_all", lambda seed: gen.manual_seed(seed))
    monkeypatch.setattr(cuda, "get_rng_state", lambda device="cuda": gen.get_state())
    monkeypatch.setattr(cuda, "set_rng_state", lambda state, device="cuda": gen.set_state(state))
    expected = torch.Generator().manual_seed(11)
    torch.randn(3, generator=expected)
    env = gym.make("dvae/WorldModel-v0", run_dir=run_dir, env_id="Pendulum-v1")
    torch.randn(3, generator=gen)  # the caller's draw before the env runs
    env.reset(seed=0)
    env.step(np.array([0.5], np.float32))
    assert torch.equal(torch.randn(3, generator=gen), torch.randn(3, generator=expected))
    before = torch.get_rng_state()
    env.step(np.array([0.5], np.float32))
    assert torch.equal(torch.get_rng_state(), before)  # the CPU stream too
