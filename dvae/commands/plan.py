"""``dvae plan``: model-predictive control in a real env with a run's model (:meth:`dvae.Run.plan`)."""

from __future__ import annotations

from dvae.commands.common import add_common, load_run, method_defaults


def add_plan(sub) -> None:
    p = sub.add_parser("plan", help="model-predictive control in a real env with the learned model")
    d = method_defaults("plan")
    p.add_argument("run_dir", help="a run directory written by dvae train")
    p.add_argument("--env", required=True, help="Gymnasium env id with a known reward (Pendulum-v1)")
    p.add_argument("--episodes", type=int, default=d["episodes"], help="real episodes, each from its own seed")
    p.add_argument("--planner", choices=["cem", "mppi"], default=d["planner"],
                   help="cem: the cross-entropy method; mppi: model-predictive path integral")
    p.add_argument("--horizon", type=int, default=d["horizon"], help="steps each plan looks ahead in the model (>= 2)")
    p.add_argument("--num-samples", type=int, default=d["num_samples"], help="candidate action sequences per iteration")
    p.add_argument("--iterations", type=int, default=d["iterations"], help="planner refinements per real step")
    p.add_argument("--history", type=int, default=d["history"], help="real observations the world model is filtered on")
    p.add_argument("--max-steps", type=int, default=d["max_steps"], help="real steps per episode at most")
    p.add_argument("--no-baselines", action="store_true", help="skip the random and true-simulator baselines")
    p.add_argument("--save-episodes", metavar="FILE.npz", default=None,
                   help="write the planner's real episodes as trajectories (to train on them)")
    add_common(p, device_and_seed=True)


def cmd_plan(a) -> dict:
    from envs.rewards import reward_fn

    reward_fn(a.env)  # an env without a known reward is refused before the run is read
    return load_run(a).plan(a.env, episodes=a.episodes, planner=a.planner, horizon=a.horizon, num_samples=a.num_samples,
                            iterations=a.iterations, history=a.history, max_steps=a.max_steps,
                            baselines=not a.no_baselines, seed=a.seed, save_episodes=a.save_episodes)
