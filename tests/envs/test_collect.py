import os

import numpy as np
import pytest

from envs import OUPolicy, RandomPolicy, collect, save_npz

N, T = 3, 40


@pytest.fixture(scope="module")
def pendulum():
    return {p: collect("Pendulum-v1", N, T, policy=p, seed=0) for p in ("random", "ou")}


@pytest.fixture(scope="module")
def cartpole():
    return collect("CartPole-v1", 6, 300, policy="random", seed=1)


@pytest.mark.parametrize("policy", ["random", "ou"])
def test_pendulum_shapes_dtypes(pendulum, policy):
    d = pendulum[policy]
    assert d["obs"].shape == (N, T + 1, 3) and d["obs"].dtype == np.float32
    assert d["actions"].shape == (N, T, 1) and d["actions"].dtype == np.float32
    for k in ("rewards", "terminated", "truncated"):
        assert d[k].shape == (N, T)
    assert d["rewards"].dtype == np.float32
    assert d["terminated"].dtype == bool and d["truncated"].dtype == bool
    assert d["lengths"].dtype == np.int64 and (d["lengths"] == T).all()
    assert d["truncated"][:, -1].all() and not d["truncated"][:, :-1].any()
    assert not d["terminated"].any()
    assert str(d["env_id"]) == "Pendulum-v1" and str(d["policy"]) == policy
    assert int(d["seed"]) == 0 and not bool(d["discrete_actions"])
    assert int(d["num_actions"]) == -1 and "Box" in str(d["action_space"])
    for k, v in d.items():
        assert isinstance(v, np.ndarray) and v.dtype != object, k


@pytest.mark.parametrize("policy", ["random", "ou"])
def test_reproducible(pendulum, policy):
    same = collect("Pendulum-v1", N, T, policy=policy, seed=0)
    other = collect("Pendulum-v1", N, T, policy=policy, seed=1)
    for k, v in pendulum[policy].items():
        np.testing.assert_array_equal(same[k], v)
    assert not np.array_equal(other["obs"], same["obs"])
    assert not np.array_equal(other["actions"], same["actions"])


def test_ou_smoother_and_bounded(pendulum):
    def roughness(a):
        return np.mean(np.diff(a, axis=1) ** 2)

    ou, rnd = pendulum["ou"]["actions"], pendulum["random"]["actions"]
    assert roughness(ou) < 0.5 * roughness(rnd)
    assert ou.min() >= -2.0 and ou.max() <= 2.0
    assert ou.std() > 0.1  # actually explores


def test_policies_direct():
    import gymnasium as gym

    box = gym.spaces.Box(-1.0, 3.0, shape=(2,), dtype=np.float32)
    for cls in (RandomPolicy, OUPolicy):
        pol = cls(box, np.random.default_rng(0))
        a = np.stack([pol(None) for _ in range(200)])
        assert a.shape == (200, 2) and a.dtype == np.float32
        assert (a >= -1).all() and (a <= 3).all()
    disc = gym.spaces.Discrete(3, start=2)
    a = [OUPolicy(disc, np.random.default_rng(0))(None) for _ in range(50)]
    assert set(a) <= {2, 3, 4}


def test_cartpole_discrete_ragged(cartpole):
    d = cartpole
    n, t = 6, 300
    assert d["actions"].shape == (n, t) and d["actions"].dtype == np.int64
    assert d["obs"].shape == (n, t + 1, 4)
    assert bool(d["discrete_actions"]) and int(d["num_actions"]) == 2
    lengths = d["lengths"]
    assert (lengths < t).all() and len(set(lengths.tolist())) > 1
    for i, L in enumerate(lengths):
        assert d["terminated"][i, L - 1] and d["terminated"][i].sum() == 1
        assert not d["truncated"][i].any()
        assert set(np.unique(d["actions"][i, :L])) <= {0, 1}
        assert (d["actions"][i, L:] == 0).all() and (d["rewards"][i, L:] == 0).all()
        assert (d["rewards"][i, :L] == 1).all()
        np.testing.assert_array_equal(d["obs"][i, L:], np.broadcast_to(d["obs"][i, L], (t + 1 - L, 4)))


def test_env_time_limit_truncates():
    d = collect("Pendulum-v1", 1, 250, seed=0)  # Pendulum's TimeLimit is 200
    assert d["lengths"][0] == 200
    assert d["truncated"][0, 199] and d["truncated"][0].sum() == 1
    assert (d["obs"][0, 201:] == d["obs"][0, 200]).all()


def test_unknown_env_id():
    with pytest.raises(ValueError, match="unknown Gymnasium env id 'NoSuchEnv-v0'"):
        collect("NoSuchEnv-v0", 1, 5)


def test_unsupported_policy_and_space():
    with pytest.raises(ValueError):
        collect("Pendulum-v1", 1, 5, policy="nope")
    import gymnasium as gym

    with pytest.raises(ValueError):
        RandomPolicy(gym.spaces.MultiBinary(3), np.random.default_rng(0))


def test_save_npz_roundtrip(tmp_path, cartpole):
    path = tmp_path / "sub" / "dir" / "data.npz"
    save_npz(path, cartpole)
    assert os.listdir(path.parent) == ["data.npz"]
    with np.load(path, allow_pickle=False) as f:
        assert set(f.files) == set(cartpole)
        for k, v in cartpole.items():
            np.testing.assert_array_equal(f[k], v)
            assert f[k].dtype == v.dtype
        assert str(f["env_id"]) == "CartPole-v1"
    save_npz(path, {"x": np.arange(3)})  # overwrite in place
    assert os.listdir(path.parent) == ["data.npz"]
    with np.load(path, allow_pickle=False) as f:
        assert f.files == ["x"]


def _one_env_reference(env_id, episodes, steps, policy, seed):
    """The plain loop collect replaces: one env, episode i reset with seed + i, one policy stream."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.action_space.seed(seed)
    pol = {"random": RandomPolicy, "ou": OUPolicy}[policy](env.action_space, np.random.default_rng(seed))
    obs, acts = [], []
    for i in range(episodes):
        o, _ = env.reset(seed=seed + i)
        pol.reset()
        obs.append([o])
        acts.append([])
        for _ in range(steps):
            a = pol(o)
            o, *_ = env.step(a)
            obs[-1].append(o)
            acts[-1].append(a)
    return np.array(obs, np.float32), np.array(acts, np.float32)


@pytest.mark.parametrize("policy", ["random", "ou"])
def test_full_length_episodes_match_one_env_loop(pendulum, policy):
    """When no episode ends early the data are exactly the one-env loop's, whatever num_envs."""
    obs, acts = _one_env_reference("Pendulum-v1", N, T, policy, 0)
    for d in (pendulum[policy], collect("Pendulum-v1", N, T, policy=policy, seed=0, num_envs=2)):
        np.testing.assert_array_equal(d["obs"], obs)
        np.testing.assert_array_equal(d["actions"], acts)


@pytest.mark.parametrize("num_envs", [2, 4, 9])
def test_independent_of_num_envs(cartpole, pendulum, num_envs):
    """Ragged episodes finish out of order across sub-envs; the data do not change."""
    d = collect("CartPole-v1", 6, 300, policy="random", seed=1, num_envs=num_envs)
    assert d.keys() == cartpole.keys()
    for k, v in cartpole.items():
        np.testing.assert_array_equal(d[k], v)
        assert d[k].dtype == v.dtype
    p = collect("Pendulum-v1", N, T, policy="ou", seed=0, num_envs=num_envs)
    for k, v in pendulum["ou"].items():
        np.testing.assert_array_equal(p[k], v)


def test_ragged_with_vector_envs():
    """Episodes of different lengths, more episodes than sub-envs: each is masked by its own length."""
    d = collect("CartPole-v1", 9, 25, policy="random", seed=1, num_envs=4)
    reached = d["lengths"] == 25
    assert reached.any() and (~reached).any()  # some hit `steps`, some terminated
    for i, L in enumerate(d["lengths"]):
        assert d["truncated"][i].sum() == reached[i] and d["terminated"][i].sum() == (not reached[i])
        assert d["terminated"][i, L - 1] or d["truncated"][i, L - 1]
        assert (d["actions"][i, L:] == 0).all() and not d["terminated"][i, L:].any()
        assert (d["obs"][i, L + 1:] == d["obs"][i, L]).all()


def test_num_envs_validated_and_progress(capsys):
    with pytest.raises(ValueError, match="num_envs"):
        collect("Pendulum-v1", 1, 5, num_envs=0)
    collect("Pendulum-v1", 3, 5, num_envs=2, progress=True)
    err = capsys.readouterr().err
    assert "Pendulum-v1" in err and "3/3" in err
