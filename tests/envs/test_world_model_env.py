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


def test_discrete_actions_reach_the_model_one_hot_and_mismatched_envs_are_refused(tmp_path):
    """A run trained on CartPole's two discrete actions (one-hot, u_dim 2): the env gives the model
    action 1 as [0, 1], exactly the step of the world model under u = [0, 1], not [1, 1]."""
    from dvae.world_model import encode_actions

    d, data = tmp_path / "run", tmp_path / "cartpole.npz"
    assert main(["collect", "--env", "CartPole-v1", "--episodes", "8", "--steps", "16", "--out", str(data)]) == 0
    assert main(["train", "--data", str(data), "--epochs", "1", "--z-dim", "2", "--rnn-dim", "8",
                 "--transition-dim", "8", "--emission-dim", "8", "--no-progress", "--out", str(d)]) == 0
    env = gym.make("dvae/WorldModel-v0", run_dir=str(d), env_id="CartPole-v1", sample=False)
    np.testing.assert_array_equal(encode_actions(env.action_space, np.array([1, 0]), 2), [[0, 1], [1, 0]])
    world, given = env.unwrapped.world, []
    step = world.step
    world.step = lambda u=None: given.append(u) or step(u)  # what the model is given
    env.reset(seed=0, options={"history": (np.zeros((2, 4), np.float32), np.array([[1.0, 0.0]], np.float32))})
    obs, *_ = env.step(1)
    np.testing.assert_array_equal(given[0].numpy(), [[0.0, 1.0]])
    assert obs.shape == (4,) and np.isfinite(obs).all()
    with pytest.raises(ValueError, match="discrete actions must lie in 0..1"):
        env.step(2)
    with pytest.raises(ValueError, match="x_dim 4"):
        gym.make("dvae/WorldModel-v0", run_dir=str(d), env_id="Pendulum-v1")
    from gymnasium import spaces

    from dvae.world_model import spaces_problem  # a Box of 1 action for a run of 2 discrete ones
    model = env.unwrapped.model
    assert "u_dim 2" in spaces_problem(model, spaces.Box(-1, 1, (4,)), spaces.Box(-1, 1, (1,)))
    assert "3 discrete actions" in spaces_problem(model, spaces.Box(-1, 1, (4,)), spaces.Discrete(3))
    assert model.config.actions == "discrete"  # recorded at training, so a Box of the same width is refused
    assert "trained on discrete actions" in spaces_problem(model, spaces.Box(-1, 1, (4,)), spaces.Box(-1, 1, (2,)))


def test_a_run_of_continuous_controls_does_not_stand_in_for_discrete_actions(run_dir):
    """A Pendulum run (one continuous torque) is refused for an env of one discrete action, and a run older
    than the record of its actions (``actions`` None) keeps the dimension check alone."""
    import dataclasses

    from gymnasium import spaces

    from dvae.world_model import spaces_problem
    model = gym.make("dvae/WorldModel-v0", run_dir=run_dir).unwrapped.model
    assert model.config.actions == "continuous"
    obs = spaces.Box(-1, 1, (3,))
    assert "trained on continuous controls" in spaces_problem(model, obs, spaces.Discrete(1))
    assert spaces_problem(model, obs, spaces.Box(-2, 2, (1,))) is None
    model.config = dataclasses.replace(model.config, actions=None)  # as an older run's config reads
    assert spaces_problem(model, obs, spaces.Discrete(1)) is None


def test_bad_actions_are_refused_and_out_of_range_actions_clipped(run_dir):
    env = gym.make("dvae/WorldModel-v0", run_dir=run_dir, env_id="Pendulum-v1", sample=False)
    for bad, match in ((None, "required"), (np.array([np.nan], np.float32), "finite"),
                       (np.array([1.0, 2.0], np.float32), "shape"), (np.array(["a"]), "real numbers"),
                       (np.array([1 + 2j]), "real numbers")):
        env.reset(seed=0)
        with pytest.raises(ValueError, match=match):
            env.step(bad)
    outs = []
    for a in (2.0, 50.0):  # 50 is outside Box(-2, 2): clipped to 2, the same step
        env.reset(seed=0)
        outs.append(env.step(np.array([a], np.float32))[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="num_envs"):
        gym.make_vec("dvae/WorldModel-v0", num_envs=0, vectorization_mode="vector_entry_point", run_dir=run_dir)
    venv = gym.make_vec("dvae/WorldModel-v0", num_envs=4, vectorization_mode="vector_entry_point",
                        run_dir=run_dir, env_id="Pendulum-v1")
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(4, 1\)"):
        venv.step(np.zeros((2, 2), np.float32))  # 4 actions of 1 entry, not reshaped from (2, 2)
    with pytest.raises(ValueError, match="x_dim"):  # CartPole's 4-D observations for a 3-D Pendulum run
        gym.make("dvae/WorldModel-v0", run_dir=run_dir, env_id="CartPole-v1")
    with pytest.raises(ValueError, match="shape"):
        env.unwrapped.world.reset(np.zeros((3, 3), np.float32), np.zeros((5, 1), np.float32))  # C - 1 controls


def test_plan_with_a_run_that_cannot_stand_in_for_the_env_says_so_in_one_line(tmp_path, capsys):
    d, data = tmp_path / "run", tmp_path / "cartpole.npz"  # a CartPole run (4-D observations) on Pendulum-v1
    assert main(["collect", "--env", "CartPole-v1", "--episodes", "4", "--steps", "8", "--out", str(data)]) == 0
    assert main(["train", "--data", str(data), "--epochs", "1", "--z-dim", "2", "--rnn-dim", "8",
                 "--transition-dim", "8", "--emission-dim", "8", "--no-progress", "--out", str(d)]) == 0
    capsys.readouterr()
    code = main(["plan", str(d), "--env", "Pendulum-v1", "--episodes", "1", "--max-steps", "2"])
    err = capsys.readouterr().err
    assert code != 0 and "Pendulum-v1: observations of shape (3,), but the run's model has x_dim 4" in err
    assert len(err.strip().splitlines()) == 1


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


_X, _U = np.zeros((3, 3)), np.zeros((2, 1))  # a history of 3 Pendulum observations and the 2 controls between


@pytest.mark.parametrize("options, match", [
    ({"history": 5}, r"options\['history'\] must be a pair"),
    ({"history": (_X, _U, _U)}, r"must be a pair .* got tuple of length 3"),
    ([("history", (_X, _U))], "options must be a dict"),
    ({"history": (_X * (1 + 1j), _U)}, "history x must be real numbers, got dtype complex128"),
    ({"history": (np.full((3, 3), "a"), _U)}, "history x must be real numbers, got dtype <U1"),
    ({"history": (np.where(np.eye(3, dtype=bool), np.nan, 0.0), _U)}, r"history x has .*nan.* at index \(0, 0\)"),
    ({"history": (np.full((3, 3), 1e300), _U)}, r"history x has .*1e\+300.* at index \(0, 0\).*float32's range"),
    ({"history": (_X, np.array([[0.0], [np.inf]]))}, r"history u has .*inf.* at index \(1, 0\)"),
    ({"history": (_X[None], _U)}, r"history x must have 2 dimensions, got shape \(1, 3, 3\)"),
])
def test_a_bad_history_is_refused_naming_it_not_cast_or_passed_on(run_dir, options, match):
    """reset's history: complex numbers are not truncated, NaN/inf/float64 beyond float32 do not become NaN
    observations, and a malformed options dict is a ValueError naming it, not a raw TypeError."""
    env = gym.make("dvae/WorldModel-v0", run_dir=run_dir, env_id="Pendulum-v1")
    with pytest.raises(ValueError, match=match):
        env.reset(seed=0, options=options)
    obs, _ = env.reset(seed=0, options={"history": (_X, _U)})  # the good one still works
    assert obs.shape == (3,) and np.all(np.isfinite(obs))


@pytest.mark.parametrize("kwargs, match", [
    ({"device": "cuda:7" if not __import__("torch").cuda.is_available() else "nodevice"}, "device="),
    ({"device": "tpu"}, r"device='tpu': not a device"),
    ({"sample": "no"}, "sample must be True or False"),
    ({"num_envs": True}, "num_envs must be an integer"),
    ({"num_envs": 10 ** 5}, r"num_envs: 100000 rollouts .* over the limit of 976.6 KiB"),  # DVAE_MAX_BYTES=1e6
    ({"max_episode_steps": 0}, "max_episode_steps must be an integer >= 1"),
    ({"max_episode_steps": float("nan")}, "max_episode_steps must be an integer >= 1"),
])
def test_bad_env_arguments_are_refused_before_anything_is_allocated(run_dir, kwargs, match, monkeypatch):
    monkeypatch.setenv("DVAE_MAX_BYTES", "1e6")  # a small limit: a regression allocates megabytes, not gigabytes
    with pytest.raises(ValueError, match=match):
        gym.make_vec("dvae/WorldModel-v0", vectorization_mode="vector_entry_point", run_dir=run_dir,
                     **{"num_envs": 2, **kwargs})


@pytest.mark.parametrize("reward_fn, termination_fn, match", [
    (lambda o, a: np.zeros(5), None, r"reward_fn returned shape \(5,\), expected \(1,\)"),
    (lambda o, a: "x", None, "reward_fn must return numbers"),
    (None, lambda o: np.array([True, False]), r"termination_fn must return one bool .* shape \(2,\)"),
])
def test_callbacks_of_the_wrong_shape_are_refused(run_dir, reward_fn, termination_fn, match):
    env = gym.make("dvae/WorldModel-v0", run_dir=run_dir, env_id="Pendulum-v1", reward_fn=reward_fn,
                   termination_fn=termination_fn)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(np.zeros(1, np.float32))


def test_a_scalar_reward_of_one_rollout_is_taken_as_it_is(run_dir):
    env = gym.make("dvae/WorldModel-v0", run_dir=run_dir, env_id="Pendulum-v1", reward_fn=lambda o, a: 1.5)
    env.reset(seed=0)
    assert env.step(np.zeros(1, np.float32))[1] == 1.5
