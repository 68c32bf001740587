"""The registered systems with a known latent state: checker, determinism, dynamics, likelihood, frames."""

import copy
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils import seeding
from gymnasium.utils.env_checker import check_env

import envs
from envs import linear_gaussian as lg
from envs import pixel_pendulum as pp

IDS = sorted(envs.ENV_IDS)

# check_env's advice that does not apply: a Gaussian observation is unbounded, and the
# pendulum's torque range is Pendulum-v1's [-2, 2] on purpose.
BENIGN = ("observation space minimum value is -infinity", "observation space maximum value is infinity",
          "we recommend using a symmetric and normalized space")


def _actions(env_id, n, seed=0):
    space = gym.make(env_id).action_space
    rng = np.random.default_rng(seed)
    return rng.uniform(space.low, space.high, (n,) + space.shape).astype(np.float32)


def _rollout(env, seed, actions):
    o, info = env.reset(seed=seed)
    obs, rews, infos = [o], [], [info]
    for a in actions:
        o, r, term, trunc, info = env.step(a)
        obs.append(o)
        rews.append(r)
        infos.append(info)
    return np.stack(obs), np.array(rews), infos


@pytest.mark.parametrize("env_id", IDS)
def test_registered_with_string_entry_point(env_id):
    spec = gym.spec(env_id)
    assert spec.namespace == "dvae" and isinstance(spec.entry_point, str)
    assert spec.max_episode_steps == 200
    env = gym.make(env_id)
    assert env.observation_space.dtype == np.float32 and env.action_space.dtype == np.float32


@pytest.mark.parametrize("env_id, kwargs",
                         [(i, {}) for i in IDS] + [("dvae/PixelPendulum-v0", {"render_mode": "rgb_array"})])
def test_check_env(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=False)
    unexpected = [str(w.message) for w in caught if not any(b in str(w.message) for b in BENIGN)]
    assert unexpected == []
    if kwargs:
        env.reset(seed=0)
        frame = env.render()
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8 and frame.max() == 255


@pytest.mark.parametrize("env_id", IDS)
def test_seeded_determinism(env_id):
    acts = _actions(env_id, 30)
    a = _rollout(gym.make(env_id), 7, acts)
    b = _rollout(gym.make(env_id), 7, acts)
    env = gym.make(env_id)
    _rollout(env, 1, acts)
    c = _rollout(env, 7, acts)  # same env, reseeded: its history does not matter
    d = _rollout(gym.make(env_id), 8, acts)
    for other in (b, c):
        np.testing.assert_array_equal(a[0], other[0])
        np.testing.assert_array_equal(a[1], other[1])
        for ia, ib in zip(a[2], other[2]):
            assert ia.keys() == ib.keys()
            for k in ia:
                np.testing.assert_array_equal(ia[k], ib[k])
    assert not np.array_equal(a[0], d[0]) and not np.array_equal(a[1], d[1])


@pytest.mark.parametrize("env_id", IDS)
def test_time_limit_truncates_at_200(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    a = env.action_space.sample()
    for t in range(200):
        _, _, term, trunc, _ = env.step(a)
        assert not term and trunc == (t == 199)


# --- LinearGaussian ------------------------------------------------------------------------------------
def test_lg_params_and_overrides():
    env = gym.make("dvae/LinearGaussian-v0").unwrapped
    A, B, C, Q, R, m0, P0 = env.matrices()
    assert A.dtype == np.float64 and A.shape == (2, 2) and B.shape == (2, 1) and C.shape == (2, 2)
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(A)), [0.95, 0.95])  # damped rotation
    np.testing.assert_allclose(np.angle(np.linalg.eigvals(A)).max(), 0.2)
    env.matrices().A[0, 0] = 99.0  # a copy: the params are immutable
    assert env.matrices().A[0, 0] != 99.0
    with pytest.raises(Exception):
        env.params.A = ((1.0,),)
    big = gym.make("dvae/LinearGaussian-v0", A=np.eye(3) * 0.9, B=np.ones((3, 2)), C=np.ones((1, 3)),
                   Q=np.eye(3), R=[[0.5]], m0=np.zeros(3), P0=np.eye(3), max_action=2.0)
    assert big.observation_space.shape == (1,) and big.action_space.shape == (2,)
    assert big.action_space.high.tolist() == [2.0, 2.0]
    o, info = big.reset(seed=0)
    assert o.shape == (1,) and info["state"].shape == (3,)
    with pytest.raises(ValueError, match="B has shape"):
        lg.LinearGaussianParams(B=np.ones((3, 1)))
    with pytest.raises(ValueError, match="Q must be positive definite"):
        lg.LinearGaussianParams(Q=[[1.0, 0.0], [0.0, -1.0]])


def test_lg_transition_matches_env_step():
    env = gym.make("dvae/LinearGaussian-v0").unwrapped
    p = env.params
    acts = _actions("dvae/LinearGaussian-v0", 20) * 1.5  # some outside [-1, 1]: clipped alike
    o, info = env.reset(seed=3)
    rng, _ = seeding.np_random(3)  # what reset(seed=3) seeds np_random with
    z = lg.initial_state(rng, p)
    np.testing.assert_array_equal(z, info["state"])
    np.testing.assert_array_equal(lg.observation(z, rng, p).astype(np.float32), o)
    for a in acts:
        rng = copy.deepcopy(env.np_random)
        o, r, _, _, info = env.step(a)
        assert r == lg.reward(z, a, None, p) == -np.sum(z**2)
        z = lg.transition(z, a, rng, p)
        np.testing.assert_array_equal(z, info["state"])
        np.testing.assert_array_equal(lg.observation(z, rng, p).astype(np.float32), o)


def test_lg_batched_equals_one_by_one():
    p = lg.LinearGaussianParams()
    A, B, *_ = p.matrices()
    rng = np.random.default_rng(0)
    zs, us = rng.normal(size=(4, 5, 2)), rng.uniform(-1.5, 1.5, (4, 5, 1))  # batch (4, 5)
    batched = lg.transition(zs, us, np.random.default_rng(1), p)
    one = np.random.default_rng(1)
    singles = np.stack([lg.transition(zs[i, j], us[i, j], one, p) for i in range(4) for j in range(5)])
    np.testing.assert_allclose(batched.reshape(20, 2), singles, rtol=0, atol=1e-14)
    np.testing.assert_allclose(lg.transition(zs, us, None, p), zs @ A.T + np.clip(us, -1, 1) @ B.T, atol=1e-14)
    assert lg.observation(zs, np.random.default_rng(2), p).shape == (4, 5, 2)
    assert lg.initial_state(np.random.default_rng(2), p, (4, 5)).shape == (4, 5, 2)
    np.testing.assert_allclose(lg.reward(zs, us, None, p), -np.sum(zs**2, -1))


def _joint_gaussian_log_density(x, u, params):
    """Brute force: unroll z_t = A^t z_0 + sum_s A^(t-1-s) (B u_s + w_s) and score all of x at once."""
    A, B, C, Q, R, m0, P0 = params.matrices()
    L, (xd, zd) = len(x), C.shape
    # z_t = Phi_t @ [z_0, w_0, ..., w_{L-2}] + mu_t
    Phi = np.zeros((L, zd, L * zd))
    mu = np.zeros((L, zd))
    noise_cov = np.zeros((L * zd, L * zd))
    noise_cov[:zd, :zd] = P0
    for s in range(1, L):
        noise_cov[s * zd:(s + 1) * zd, s * zd:(s + 1) * zd] = Q
    for t in range(L):
        Phi[t, :, :zd] = np.linalg.matrix_power(A, t)
        mu[t] = np.linalg.matrix_power(A, t) @ m0
        for s in range(t):
            At = np.linalg.matrix_power(A, t - 1 - s)
            Phi[t, :, (s + 1) * zd:(s + 2) * zd] = At
            mu[t] += At @ B @ u[s]
    G = np.einsum("xz,tzk->txk", C, Phi).reshape(L * xd, L * zd)
    mean = (mu @ C.T).reshape(-1)
    cov = G @ noise_cov @ G.T + np.kron(np.eye(L), R)
    e = x.reshape(-1) - mean
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (e @ np.linalg.solve(cov, e) + logdet + L * xd * math.log(2 * math.pi))


@pytest.mark.parametrize("params", [
    lg.LinearGaussianParams(),
    lg.LinearGaussianParams(A=[[0.9, 0.3, 0.0], [-0.2, 0.8, 0.1], [0.0, 0.4, 1.05]],
                            B=[[1.0, 0.0], [0.3, -0.5], [0.0, 0.2]],
                            C=[[1.0, 0.5, -0.2], [0.0, 1.0, 0.3]],
                            Q=[[0.2, 0.05, 0.0], [0.05, 0.1, 0.0], [0.0, 0.0, 0.3]],
                            R=[[0.5, 0.1], [0.1, 0.3]], m0=[1.0, -1.0, 0.5], P0=np.diag([2.0, 0.5, 1.0]),
                            max_action=3.0),
], ids=["default", "3d-latent"])
def test_lg_kalman_equals_brute_force(params):
    env = lg.LinearGaussianEnv(params)
    rng = np.random.default_rng(0)
    for L in (1, 2, 6):
        u = rng.uniform(-params.max_action, params.max_action, (L - 1, params.u_dim))
        obs, _, _ = _rollout(env, L, u)
        exact = env.log_likelihood(obs, u)
        brute = _joint_gaussian_log_density(obs.astype(np.float64), u, params)
        assert isinstance(exact, float)
        np.testing.assert_allclose(exact, brute, rtol=1e-10, atol=1e-9)
        x_off = obs + rng.normal(size=obs.shape)  # any x, not only likely ones
        np.testing.assert_allclose(env.log_likelihood(x_off, u), _joint_gaussian_log_density(x_off, u, params),
                                   rtol=1e-10, atol=1e-9)
    # actions are clipped as in the dynamics; None means zero controls
    u_clipped = np.clip(u * 10, -params.max_action, params.max_action)
    np.testing.assert_allclose(env.log_likelihood(x_off, u * 10),
                               _joint_gaussian_log_density(x_off, u_clipped, params))
    np.testing.assert_allclose(env.log_likelihood(x_off, None), _joint_gaussian_log_density(x_off, 0 * u, params))
    with pytest.raises(ValueError, match="actions must have shape"):
        env.log_likelihood(x_off, u[:-1])


def test_lg_true_params_fit_best():
    """The exact likelihood prefers the parameters that generated the data."""
    d = envs.collect("dvae/LinearGaussian-v0", 20, 50, seed=0)
    true, wrong = lg.LinearGaussianParams(), lg.LinearGaussianParams(B=((0.0,), (-0.5,)))
    ll = lambda p: sum(lg.log_likelihood(d["obs"][i], d["actions"][i], p) for i in range(20))  # noqa: E731
    assert ll(true) > ll(wrong) + 10


def test_lg_likelihood_accounts_for_controls():
    """Same seed, so same noise, under two policies: the innovations are the same, and so is log p(x | u);
    scoring one run's observations with the other run's controls is far less likely."""
    a = envs.collect("dvae/LinearGaussian-v0", 4, 50, policy="random", seed=0)
    b = envs.collect("dvae/LinearGaussian-v0", 4, 50, policy="ou", seed=0)
    assert not np.allclose(a["obs"], b["obs"], atol=0.1)
    for i in range(4):
        la = lg.log_likelihood(a["obs"][i], a["actions"][i])
        lb = lg.log_likelihood(b["obs"][i], b["actions"][i])
        assert abs(la - lb) < 1e-4  # float32 observations
        assert lg.log_likelihood(b["obs"][i], a["actions"][i]) < lb - 10


# --- PixelPendulum -------------------------------------------------------------------------------------
def test_pp_transition_matches_gymnasium_pendulum():
    """The batched dynamics and the reward are Pendulum-v1's."""
    ref = gym.make("Pendulum-v1").unwrapped
    ref.reset(seed=0)
    rng = np.random.default_rng(0)
    states = np.stack([rng.uniform(-4, 4, 64), rng.uniform(-9, 9, 64)], -1)  # (64, 2), beyond the clips too
    acts = rng.uniform(-3, 3, (64, 1))
    nxt = pp.transition(states, acts)
    rew = pp.reward(states, acts)
    for s, a, n, r in zip(states, acts, nxt, rew):
        ref.state = s.copy()
        _, r_ref, _, _, _ = ref.step(a)
        np.testing.assert_allclose(n, ref.state, rtol=0, atol=1e-14)
        np.testing.assert_allclose(r, r_ref, rtol=0, atol=1e-12)


def test_pp_batched_equals_env_step():
    B = 6
    env_list = [gym.make("dvae/PixelPendulum-v0").unwrapped for _ in range(B)]
    infos = [e.reset(seed=i)[1] for i, e in enumerate(env_list)]
    state = np.array([[i["theta"], i["theta_dot"]] for i in infos])  # (B, 2)
    np.testing.assert_array_equal(state[0], pp.initial_state(seeding.np_random(0)[0]))
    np.testing.assert_array_equal(state, [pp.initial_state(seeding.np_random(i)[0]) for i in range(B)])
    acts = _actions("dvae/PixelPendulum-v0", 40 * B).reshape(40, B, 1)
    for a in acts:
        r_batch = pp.reward(state, a)
        state = pp.transition(state, a, None, env_list[0].params)
        frames = pp.render_frames(state[:, 0])  # (B, 32, 32)
        for k, e in enumerate(env_list):
            o, r, _, _, info = e.step(a[k])
            np.testing.assert_array_equal([info["theta"], info["theta_dot"]], state[k])
            np.testing.assert_array_equal(o, frames[k])
            assert r == r_batch[k]


def test_pp_frames_point_at_the_true_angle():
    p = pp.PixelPendulumParams()
    thetas = np.linspace(-math.pi, math.pi, 37)
    frames = pp.render_frames(thetas, p)  # (37, 32, 32)
    assert frames.dtype == np.float32 and frames.min() == 0.0 and frames.max() == 1.0
    n = p.size
    c = (np.arange(n) + 0.5) - n / 2  # pixel centre offsets from the frame centre, pixels
    col, row = np.meshgrid(c, c)
    r_pix = p.l / (2 * p.view / n)  # rod length in pixels
    far = np.hypot(col, row) > 0.6 * r_pix
    for th, f in zip(thetas, frames):
        w = f * far
        # the bright pixels far from the pivot lie in the direction (-sin, -cos) in (column, row)
        est = math.atan2(-(w * col).sum(), -(w * row).sum())
        assert abs(pp.angle_normalize(est - th)) < math.radians(3), (th, est)
        k = np.unravel_index(np.argmax(w), w.shape)
        assert np.dot([col[k], row[k]], [-math.sin(th), -math.cos(th)]) > 0.6 * r_pix
        assert f.sum() > 0.8 * r_pix * p.rod_width / (2 * p.view / n)  # a rod, not a dot
    # frames change with the angle, and only through it
    assert all(not np.array_equal(frames[i], frames[i + 1]) for i in range(36))
    np.testing.assert_allclose(pp.render_frames(thetas + 2 * math.pi, p), frames, atol=1e-5)
    up = frames[18]  # theta = 0: up
    assert up[: n // 2].sum() > 10 * up[n // 2 + 2:].sum()


def test_pp_obs_is_frame_of_info_angle_and_sizes():
    env = gym.make("dvae/PixelPendulum-v0", size=20, view=1.5)
    assert env.observation_space.shape == (20, 20)
    o, info = env.reset(seed=0, options={"state": (0.5, -1.0)})
    assert info == {"theta": 0.5, "theta_dot": -1.0}
    np.testing.assert_array_equal(o, pp.render_frames(0.5, env.unwrapped.params))
    assert env.observation_space.contains(o)


# --- collection ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", IDS)
def test_collect_registered_env(env_id):
    d = envs.collect(env_id, 3, 10, seed=0, num_envs=2)
    obs_dim = {"dvae/LinearGaussian-v0": 2, "dvae/PixelPendulum-v0": 32 * 32}[env_id]
    assert d["obs"].shape == (3, 11, obs_dim) and d["actions"].shape == (3, 10, 1)
    assert (d["lengths"] == 10).all() and d["truncated"][:, -1].all() and str(d["env_id"]) == env_id
    assert d["action_low"].tolist() == [float(gym.make(env_id).action_space.low[0])]
    long = envs.collect(env_id, 2, 205, seed=0, num_envs=2)
    assert (long["lengths"] == 200).all() and long["truncated"][:, 199].all() and long["truncated"].sum() == 2
    # the observations are the env's own: replay episode 1 by hand
    env = gym.make(env_id)
    o, _ = env.reset(seed=1)
    np.testing.assert_array_equal(d["obs"][1, 0], o.reshape(-1))
    for t in range(10):
        o, r, *_ = env.step(d["actions"][1, t])
        np.testing.assert_array_equal(d["obs"][1, t + 1], o.reshape(-1))
        assert d["rewards"][1, t] == np.float32(r)
