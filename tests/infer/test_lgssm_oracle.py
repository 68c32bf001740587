"""The exact Kalman log-likelihood against brute force, and the trained DMM's bounds against it."""

import math

import numpy as np
import pyro
import pytest

from dvae.data import Normalizer
from dvae.eval.exact import LGSSMParams, kalman_log_likelihood, sample_lgssm
from dvae.infer.evaluation import evaluate
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model


def brute_force_log_likelihood(p: LGSSMParams, x, u):
    """log N(x; mean, cov) of the whole sequence as one joint Gaussian, built by unrolling the system."""
    L, _z_dim = len(x), p.A.shape[0]
    means, covs = [p.m0], {(0, 0): p.P0}
    for t in range(1, L):
        means.append(p.A @ means[-1] + p.B @ u[t - 1])
        covs[(t, t)] = p.A @ covs[(t - 1, t - 1)] @ p.A.T + p.Q
    for s in range(L):
        for t in range(s + 1, L):
            covs[(t, s)] = p.A @ covs[(t - 1, s)]  # Cov(z_t, z_s) = A Cov(z_{t-1}, z_s)
    Z = np.block([[covs[(max(s, t), min(s, t))] if t >= s else covs[(max(s, t), min(s, t))].T
                   for s in range(L)] for t in range(L)])  # (L z_dim, L z_dim)
    Cb = np.kron(np.eye(L), p.C)
    mean = Cb @ np.concatenate(means)
    cov = Cb @ Z @ Cb.T + np.kron(np.eye(L), p.R)
    r = x.reshape(-1) - mean
    return -0.5 * (r @ np.linalg.solve(cov, r) + np.linalg.slogdet(cov)[1] + len(r) * math.log(2 * math.pi))


@pytest.mark.parametrize("z_dim, x_dim, u_dim", [(1, 1, 1), (2, 3, 1), (3, 2, 2)])
def test_kalman_log_likelihood_equals_brute_force(z_dim, x_dim, u_dim):
    g = np.random.default_rng(z_dim)
    A = 0.5 * g.standard_normal((z_dim, z_dim))
    S = g.standard_normal((z_dim, z_dim))
    Rm = g.standard_normal((x_dim, x_dim))
    p = LGSSMParams(A, g.standard_normal((z_dim, u_dim)), g.standard_normal((x_dim, z_dim)), S @ S.T + 0.1 * np.eye(z_dim),
                    Rm @ Rm.T + 0.1 * np.eye(x_dim), g.standard_normal(z_dim), np.eye(z_dim))
    xs, us, _ = sample_lgssm(p, 1, 6, g)
    assert kalman_log_likelihood(p, xs[0], us[0]) == pytest.approx(brute_force_log_likelihood(p, xs[0], us[0]), rel=1e-9)


TRUE = LGSSMParams(np.array([[0.9]]), np.array([[0.5]]), np.array([[1.0]]), np.array([[0.09]]), np.array([[0.25]]),
                   np.zeros(1), np.eye(1))
MARGIN = 0.25  # nats per step: how close 40 epochs of the DMM get to the exact likelihood (measured ~0.14)


def test_trained_dmm_bounds_sit_just_above_the_exact_nll():
    rng = np.random.default_rng(0)
    xs, us, _ = sample_lgssm(TRUE, 320, 25, rng)
    xs, us = xs.astype(np.float32), us.astype(np.float32)
    train, valid, test = slice(0, 256), slice(256, 288), slice(288, 320)
    exact = np.array([kalman_log_likelihood(TRUE, xs[i], us[i]) for i in range(288, 320)])
    exact_nll = -exact.sum() / exact.size / 25
    norm = Normalizer.fit(list(xs[train]), list(us[train]))  # bounds must come back in data units

    def prep(s):
        return norm.x(list(xs[s])), norm.u(list(us[s]))

    pyro.set_rng_seed(0)
    model = build_model(ModelConfig("dmm", x_dim=1, u_dim=1, z_dim=2, rnn_dim=32, transition_dim=32, emission_dim=32))
    trainer = Trainer(model, TrainConfig(epochs=40, batch_size=32, lr=3e-3, anneal_epochs=2, patience=0),
                      prep(train), prep(valid), norm.log_det_per_step)
    trainer.fit(progress=False)
    pyro.set_rng_seed(1)
    reps = [evaluate(model, *prep(test), norm.log_det_per_step, num_particles=5) for _ in range(8)]
    neg_elbo = np.array([r["neg_elbo_per_step"] for r in reps])
    mc_err = 3 * neg_elbo.std(ddof=1) / math.sqrt(len(reps)) + 1e-3
    # an upper bound on the NLL: never below the exact value by more than its Monte Carlo error ...
    assert neg_elbo.mean() >= exact_nll - mc_err
    # ... and, after training, within the stated margin of it
    assert neg_elbo.mean() - exact_nll < MARGIN, (neg_elbo.mean(), exact_nll)
    iw = evaluate(model, *prep(test), norm.log_det_per_step, iw_samples=100)["nll_iw_per_step"]
    assert exact_nll - mc_err <= iw <= neg_elbo.mean() + mc_err
