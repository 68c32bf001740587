"""The one exact oracle, ``dvae.eval.exact.kalman_log_likelihood(params, x, u)``: against the joint Gaussian
of x_0..x_{L-1} built as one covariance matrix, its one parameter type and argument order, the
linear-Gaussian env's likelihood through it, and its errors."""

import subprocess
import sys

import numpy as np
import pytest

import envs.linear_gaussian as lg
from dvae.eval.exact import LGSSMParams, kalman_log_likelihood
from tests.infer.test_lgssm_oracle import brute_force_log_likelihood


def _system(z_dim, x_dim, u_dim, seed):
    g = np.random.default_rng(seed)
    S, Rm, P = (g.standard_normal((d, d)) for d in (z_dim, x_dim, z_dim))
    return LGSSMParams(0.7 * g.standard_normal((z_dim, z_dim)), g.standard_normal((z_dim, u_dim)),
                       g.standard_normal((x_dim, z_dim)), S @ S.T + 0.1 * np.eye(z_dim),
                       Rm @ Rm.T + 0.1 * np.eye(x_dim), g.standard_normal(z_dim), P @ P.T + 0.5 * np.eye(z_dim)), g


@pytest.mark.parametrize("z_dim, x_dim, u_dim", [(1, 1, 1), (3, 2, 2), (2, 4, 1)])
@pytest.mark.parametrize("L", [1, 2, 5])
def test_oracle_equals_the_joint_gaussian(z_dim, x_dim, u_dim, L):
    p, g = _system(z_dim, x_dim, u_dim, seed=10 * z_dim + L)
    x, u = g.standard_normal((L, x_dim)), g.standard_normal((L, u_dim))
    brute = brute_force_log_likelihood(p, x, u)
    assert kalman_log_likelihood(p, x, u) == pytest.approx(brute, rel=1e-10, abs=1e-10)
    # u with L - 1 rows (the env's layout) or L rows whose last one is unused: the same
    assert kalman_log_likelihood(p, x, u[:L - 1]) == pytest.approx(brute, rel=1e-10, abs=1e-10)
    # no controls: the controls' term is absent, as with zero controls
    zero = brute_force_log_likelihood(p, x, np.zeros((L, u_dim)))
    assert kalman_log_likelihood(p, x, None) == pytest.approx(zero, rel=1e-10, abs=1e-10)


def test_the_env_uses_the_oracle_with_its_clipped_actions():
    params = lg.LinearGaussianParams(max_action=0.5)
    g = np.random.default_rng(0)
    obs, actions = g.standard_normal((6, params.x_dim)), 2 * g.standard_normal((5, params.u_dim))
    M = params.matrices()  # envs' own tuple: the oracle's fields in the oracle's order
    assert M._fields == LGSSMParams._fields
    expected = kalman_log_likelihood(M, obs, np.clip(actions, -0.5, 0.5))
    assert lg.log_likelihood(obs, actions, params) == expected
    assert lg.LinearGaussianEnv(params).log_likelihood(obs, actions) == expected
    assert expected == pytest.approx(brute_force_log_likelihood(LGSSMParams(*M), obs, np.clip(actions, -0.5, 0.5)),
                                     rel=1e-10)
    assert not hasattr(lg, "kalman_log_likelihood")  # the env's own filter is gone


def test_oracle_refuses_bad_input():
    p, _ = _system(2, 3, 1, seed=0)
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"x must have shape \(L >= 1, 3\)"):
        kalman_log_likelihood(p, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"u must have shape \(3 or 4, 1\)"):
        kalman_log_likelihood(p, x, np.zeros((2, 1)))
    with pytest.raises(ValueError, match="finite"):
        kalman_log_likelihood(p, np.full((4, 3), np.nan))


def test_importing_envs_does_not_import_torch():
    """The env calls the oracle in ``dvae`` lazily: ``import envs`` stays light (numpy and gymnasium)."""
    code = "import sys, envs; assert 'torch' not in sys.modules and 'dvae' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
