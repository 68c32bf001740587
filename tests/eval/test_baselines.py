import numpy as np
import pytest

from dvae.eval.baselines import LinearARX, kstep_rmse, kstep_windows, persistence_forecast


def _simulate(A, B, c, x0, u):
    """x0: (x_dim,), u: (L, u_dim) -> x: (L, x_dim) with x_{t+1} = A x_t + B u_t + c."""
    x = [x0]
    for t in range(len(u) - 1):
        x.append(A @ x[-1] + B @ u[t] + c)
    return np.stack(x)


def _system():
    rng = np.random.default_rng(0)
    A = np.array([[0.9, 0.1, 0.0], [-0.2, 0.8, 0.1], [0.0, 0.05, 0.7]])
    B = rng.normal(size=(3, 2))
    c = np.array([0.1, -0.2, 0.3])
    return rng, A, B, c


def test_linear_arx_recovers_system_and_rollout():
    rng, A, B, c = _system()
    us = [rng.normal(size=(L, 2)) for L in (30, 45, 12)]
    xs = [_simulate(A, B, c, rng.normal(size=3), u) for u in us]
    m = LinearARX().fit(xs, us)
    np.testing.assert_allclose(m.A, A, atol=1e-6)
    np.testing.assert_allclose(m.B, B, atol=1e-6)
    np.testing.assert_allclose(m.c, c, atol=1e-6)

    x_ctx, u_fut, x_fut, _ = kstep_windows(xs, us, context=5, horizon=7)
    pred = m.forecast(x_ctx[:, -1], u_fut, horizon=7)
    assert pred.shape == x_fut.shape == (3, 7, 3)
    np.testing.assert_allclose(pred, x_fut, atol=1e-5)
    assert max(kstep_rmse(pred, x_fut)) < 1e-5


def test_linear_arx_uncontrolled():
    rng, A, _, c = _system()
    xs = [_simulate(A, np.zeros((3, 1)), c, rng.normal(size=3), np.zeros((L, 1))) for L in (25, 40)]
    m = LinearARX().fit(xs, None)
    assert m.B is None
    np.testing.assert_allclose(m.A, A, atol=1e-6)
    np.testing.assert_allclose(m.c, c, atol=1e-6)
    pred = m.forecast(xs[1][9][None], None, horizon=10)
    np.testing.assert_allclose(pred[0], xs[1][10:20], atol=1e-5)


def test_persistence_repeats_last():
    x = np.arange(2 * 4 * 3, dtype=float).reshape(2, 4, 3)
    p = persistence_forecast(x, 5)
    assert p.shape == (2, 5, 3)
    for k in range(5):
        np.testing.assert_array_equal(p[:, k], x[:, -1])


def test_kstep_rmse_hand_computed():
    truth = np.zeros((2, 2, 2))
    pred = np.array([[[1.0, 1.0], [2.0, 0.0]], [[3.0, 1.0], [0.0, 0.0]]])
    # k=1: errors^2 = 1,1,9,1 -> mean 3; k=2: 4,0,0,0 -> mean 1
    np.testing.assert_allclose(kstep_rmse(pred, truth), [np.sqrt(3.0), 1.0])


def test_kstep_windows_slices_and_excludes_short():
    lengths = [10, 4, 7, 6, 3]
    xs = [np.arange(L)[:, None] * np.array([1.0, -1.0]) + 100 * i for i, L in enumerate(lengths)]
    us = [np.arange(L)[:, None] + 1000.0 * i for i, L in enumerate(lengths)]
    x_ctx, u_fut, x_fut, idx = kstep_windows(xs, us, context=3, horizon=4)
    np.testing.assert_array_equal(idx, [0, 2])
    assert x_ctx.shape == (2, 3, 2) and x_fut.shape == (2, 4, 2) and u_fut.shape == (2, 4, 1)
    for b, i in enumerate(idx):
        np.testing.assert_array_equal(x_ctx[b], xs[i][0:3])
        np.testing.assert_array_equal(x_fut[b], xs[i][3:7])
        np.testing.assert_array_equal(u_fut[b], us[i][2:6])
    np.testing.assert_array_equal(u_fut[1, :, 0], [2002, 2003, 2004, 2005])

    _, u_none, _, idx2 = kstep_windows(xs, None, context=2, horizon=4)
    assert u_none is None
    np.testing.assert_array_equal(idx2, [0, 2, 3])


def test_kstep_windows_too_short_raises():
    xs = [np.zeros((5, 1)), np.zeros((8, 1))]
    with pytest.raises(ValueError, match=r"longest length 8.*9"):
        kstep_windows(xs, None, context=4, horizon=5)


def test_gaussian_nll_matches_a_hand_computation():
    from dvae.eval.openloop import gaussian_nll

    truth = np.array([[[1.0, 0.0]]])
    mean = np.array([[[0.0, 0.0]]])
    std = np.array([[[2.0, 1.0]]])
    expected = 0.5 * (np.log(2 * np.pi * 4) + 1 / 4) + 0.5 * np.log(2 * np.pi)
    np.testing.assert_allclose(gaussian_nll(truth, mean, std), [[expected]])
