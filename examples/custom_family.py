"""A model family that is not in the package, in one file: state its dynamics, and everything follows.

    z_0 ~ N(m0, diag(s0))
    z_t ~ N(A z_{t-1} + B u_{t-1}, diag(q))        a LINEAR transition
    x_t ~ N(MLP(z_t), diag(r))                      a nonlinear emitter
    guide: q(z_t | z_{t-1}, x_t, u_{t-1}) = N(Net([A z_{t-1} + B u_{t-1}, x_t]))   a filter

The class states the contract of ``dvae.models.base.DynamicalVAE`` (``initial_state``,
``transition_step``, ``emission``, ``filter_step``); training by SVI, the ELBO and IW bounds, open-loop
prediction, the particle filter, the world model, its Gymnasium env and planning come from the package.

    python examples/custom_family.py [--quick]
"""

import argparse

import gymnasium as gym
import pyro.distributions as dist
import torch
import torch.nn as nn

import envs  # noqa: F401  (registers dvae/WorldModel-v0)
from dvae.data import Normalizer, collate
from dvae.infer.evaluation import evaluate
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.infer.smc import model_particle_filter
from dvae.models import DynamicalVAE, ModelConfig
from dvae.nn import MLP, GaussianHead, positive
from dvae.planning import model_policy, run_episodes
from dvae.control import PlannerConfig
from dvae.world_model import WorldModel
from envs.rewards import REWARDS
from envs.sources import load_pendulum


class LinearDMM(DynamicalVAE):
    name = "linear_dmm"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        self.A = nn.Linear(c.z_dim, c.z_dim, bias=False)  # p(z_t | z_{t-1}, u_{t-1}): A z + B u, diag(q)
        self.B = nn.Linear(max(c.u_dim, 1), c.z_dim, bias=False)
        self.raw_q, self.m0, self.raw_s0 = (nn.Parameter(torch.zeros(c.z_dim)) for _ in range(3))
        self.emitter = MLP(c.z_dim, c.emission_dim, c.x_dim)  # p(x_t | z_t): mean MLP(z), diag(r)
        self.raw_r = nn.Parameter(torch.zeros(c.x_dim))
        self.posterior = GaussianHead(c.z_dim + c.x_dim, c.transition_dim, c.z_dim)  # q(z_t | ., x_t)

    def _prior(self, loc):
        return dist.Normal(loc, positive(self.raw_q).expand_as(loc)).to_event(1)

    def initial_state(self, n, c=None):
        loc = self.m0.expand(n, -1)  # (n, z_dim)
        return {"pred": loc}, dist.Normal(loc, positive(self.raw_s0).expand_as(loc)).to_event(1)

    def transition_step(self, state, x, u=None, obs_mask=None):
        pred = self.A(state["z"]) + (self.B(u) if u is not None else 0.0)  # (n, z_dim): A z_{t-1} + B u_{t-1}
        return {"pred": pred}, self._prior(pred)

    def emission(self, state, obs_mask=None):
        loc = self.emitter(state["z"])  # (n, x_dim)
        return dist.Normal(loc, positive(self.raw_r).expand_as(loc)).to_event(1)

    def filter_step(self, state, x, obs_mask=None):
        loc, scale = self.posterior(torch.cat([state["pred"], x], -1))
        return dist.Normal(loc, scale).to_event(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few seconds: tiny data, 2 epochs, short episodes")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    episodes, epochs, steps = (16, 2, 20) if a.quick else (128, 60, 200)
    data = load_pendulum(seed=0, episodes=episodes, steps=64)  # Pendulum-v1 under random torques
    norm = Normalizer.fit(*data.subset("train"))
    split = {s: (norm.x(xs), norm.u(us)) for s, (xs, us) in ((s, data.subset(s)) for s in ("train", "valid", "test"))}
    model = LinearDMM(ModelConfig("linear_dmm", x_dim=3, u_dim=1, z_dim=4, emission_dim=32, transition_dim=32))
    Trainer(model, TrainConfig(epochs=epochs, seed=0, device="cpu"), split["train"], split["valid"],
            norm.log_det_per_step).fit(progress=False)
    bounds = evaluate(model, *split["test"], norm.log_det_per_step, iw_samples=16)
    print(f"test -ELBO {bounds['neg_elbo_per_step']:.3f}, IW(16) {bounds['nll_iw_per_step']:.3f} nats per step")

    xs, us = split["test"]
    batch = collate([torch.from_numpy(x) for x in xs], [torch.from_numpy(u) for u in us])
    context = collate([torch.from_numpy(x[:20]) for x in xs], [torch.from_numpy(u[:20]) for u in us])
    future = torch.stack([torch.from_numpy(u[19:39]) for u in us])  # u_19 .. u_38 drive x_20 .. x_39
    pred = model.predict(context, future, horizon=20, num_samples=32)["x_mean"].mean(0)  # (B, 20, x_dim)
    rmse = (pred - batch.x[:, 20:40]).pow(2).mean().sqrt()
    print(f"open-loop RMSE over 20 steps: {rmse:.3f} (standardised units)")
    pf = model_particle_filter(model, batch, 256).sum() / batch.lengths.sum()
    print(f"particle filter (256): {-pf + norm.log_det_per_step:.3f} nats per step")

    world = WorldModel(model, norm)
    world.reset(data.xs[0][:10], data.us[0][:9], num_samples=4)
    print("imagined next observations:", world.step(torch.zeros(4, 1)).shape)
    env = gym.make("dvae/WorldModel-v0", model=model, normalizer=norm, env_id="Pendulum-v1")
    obs, _ = env.reset(seed=0)
    obs, reward, *_ = env.step(env.action_space.sample())
    print(f"one step of the imagined env: reward {reward:.2f}")

    config = PlannerConfig(horizon=10 if a.quick else 15, num_samples=64 if a.quick else 256)
    reward = REWARDS["Pendulum-v1"]
    returns = run_episodes("Pendulum-v1", model_policy(model, norm, reward, "cem", config, seed=0), 1, 0, steps)
    print(f"planning on Pendulum-v1 with the learned model: return {returns[0]:.1f} over {steps} steps")


if __name__ == "__main__":
    main()
