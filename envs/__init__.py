"""Trajectory collection from Gymnasium environments, and systems with a known latent state.

Importing ``envs`` registers with Gymnasium (string entry points, TimeLimit 200):

- ``dvae/LinearGaussian-v0``: :class:`envs.linear_gaussian.LinearGaussianEnv`, a controlled
  linear-Gaussian state-space model with an exact Kalman log-likelihood;
- ``dvae/PixelPendulum-v0``: :class:`envs.pixel_pendulum.PixelPendulumEnv`, Pendulum-v1
  seen through 32 x 32 grayscale frames;
- ``dvae/WorldModel-v0``: :class:`envs.world_model_env.WorldModelEnv`, a trained model as an env
  (``gym.make("dvae/WorldModel-v0", run_dir=...)``; ``gym.make_vec`` gives the batched
  :class:`~envs.world_model_env.WorldModelVectorEnv`).

The built-in data sources (``pendulum``) are in :mod:`envs.sources`, which ``import envs`` does not
import. Only the world-model env and the sources import ``dvae``, and only its public ``dvae.run``,
``dvae.world_model`` and ``dvae.data``; the linear-Gaussian env's ``log_likelihood``, when called,
imports the exact oracle ``dvae.eval.exact``.
(``envs.collect.save_npz`` writes through the project's one file writer, ``dvae.files``.)
"""

import gymnasium as gym

from envs.collect import OUPolicy, RandomPolicy, collect, save_npz
from envs.linear_gaussian import LinearGaussianEnv, LinearGaussianParams
from envs.pixel_pendulum import PixelPendulumEnv, PixelPendulumParams

ENV_IDS = {
    "dvae/LinearGaussian-v0": "envs.linear_gaussian:LinearGaussianEnv",
    "dvae/PixelPendulum-v0": "envs.pixel_pendulum:PixelPendulumEnv",
}

for _id, _entry_point in ENV_IDS.items():
    if _id not in gym.registry:  # importing twice (e.g. after a reload) must not warn
        gym.register(id=_id, entry_point=_entry_point, max_episode_steps=200)
if "dvae/WorldModel-v0" not in gym.registry:
    gym.register(id="dvae/WorldModel-v0", entry_point="envs.world_model_env:WorldModelEnv",
                 vector_entry_point="envs.world_model_env:WorldModelVectorEnv", max_episode_steps=200)

__all__ = ["collect", "save_npz", "OUPolicy", "RandomPolicy", "ENV_IDS",
           "LinearGaussianEnv", "LinearGaussianParams",
           "PixelPendulumEnv", "PixelPendulumParams"]
