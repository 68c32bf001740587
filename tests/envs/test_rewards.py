import gymnasium as gym
import numpy as np
import torch

from envs.rewards import pendulum_reward


def test_pendulum_reward_from_observations_equals_the_envs_reward():
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.uniform(-2, 2, size=1).astype(np.float32)
        expected = pendulum_reward(obs[None], a[None])[0]
        obs, r, *_ = env.step(a)
        assert np.isclose(r, expected, atol=1e-5)
    t = pendulum_reward(torch.tensor(obs)[None], torch.tensor([[0.5]]))
    assert torch.is_tensor(t) and t.shape == (1,)
