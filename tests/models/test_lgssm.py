"""The linear-Gaussian baseline: its Pyro program's score is the exact Kalman log-likelihood, its
smoother is the exact posterior mean, and fitting it by SVI is maximum likelihood."""


import numpy as np
import pyro
import pytest
import torch

from dvae.data import collate
from dvae.eval.exact import LGSSMParams, kalman_log_likelihood, sample_lgssm
from dvae.infer import elbo_terms, iw_bound
from dvae.infer.evaluation import evaluate
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model


def _model(z_dim=2, x_dim=3, u_dim=1, seed=0):
    torch.manual_seed(seed)
    m = build_model(ModelConfig("lgssm", x_dim=x_dim, u_dim=u_dim, z_dim=z_dim))
    with torch.no_grad():  # move away from the initial values so every parameter matters
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


def _numpy_params(m):
    return LGSSMParams(*(t.detach().double().numpy() for t in m.params()))


def test_lgssm_score_is_the_exact_kalman_log_likelihood_with_padding():
    m = _model()
    g = torch.Generator().manual_seed(1)
    lengths = (6, 3, 1)
    xs = [torch.randn(L, 3, generator=g) for L in lengths]
    us = [torch.randn(L, 1, generator=g) for L in lengths]
    terms = elbo_terms(m.model, m.guide, collate(xs, us))
    p = _numpy_params(m)
    for i in range(3):
        exact = kalman_log_likelihood(p, xs[i].double().numpy(), us[i].double().numpy())
        assert terms["elbo"][i].item() == pytest.approx(exact, rel=1e-4, abs=1e-4)
    assert (terms["kl"] == 0).all()
    # with no latent sites, the importance-weighted bound is the same exact value
    torch.testing.assert_close(iw_bound(m.model, m.guide, collate(xs, us), 3), terms["elbo"], rtol=1e-5, atol=1e-5)


def test_lgssm_smoother_equals_the_brute_force_posterior_mean():
    m = _model(z_dim=2, x_dim=1, u_dim=1)
    p = _numpy_params(m)
    g = np.random.default_rng(3)
    L = 4
    x, u = g.standard_normal((L, 1)), g.standard_normal((L, 1))
    # joint Gaussian of (z_0..z_{L-1}, x_0..x_{L-1}) by unrolling
    Mz = [p.m0]
    for t in range(1, L):
        Mz.append(p.A @ Mz[-1] + p.B @ u[t - 1])
    cov = {(0, 0): p.P0}
    for t in range(1, L):
        cov[(t, t)] = p.A @ cov[(t - 1, t - 1)] @ p.A.T + p.Q
    for s in range(L):
        for t in range(s + 1, L):
            cov[(t, s)] = p.A @ cov[(t - 1, s)]
            cov[(s, t)] = cov[(t, s)].T
    Szz = np.block([[cov[(s, t)] for t in range(L)] for s in range(L)])
    Cb = np.kron(np.eye(L), p.C)
    Sxx = Cb @ Szz @ Cb.T + np.kron(np.eye(L), p.R)
    mz = np.concatenate(Mz)
    post = mz + Szz @ Cb.T @ np.linalg.solve(Sxx, x.ravel() - Cb @ mz)
    loc, _ = m.smooth(collate([torch.tensor(x, dtype=torch.float32)], [torch.tensor(u, dtype=torch.float32)]))
    np.testing.assert_allclose(loc[0].numpy().ravel(), post, rtol=1e-3, atol=1e-4)


def test_fitting_lgssm_by_svi_reaches_the_true_likelihood():
    true = LGSSMParams(np.array([[0.9]]), np.array([[0.5]]), np.array([[1.0]]), np.array([[0.09]]),
                       np.array([[0.25]]), np.zeros(1), np.eye(1))
    rng = np.random.default_rng(0)
    xs, us, _ = sample_lgssm(true, 200, 25, rng)
    xs, us = list(xs.astype(np.float32)), list(us.astype(np.float32))
    exact_nll = -np.mean([kalman_log_likelihood(true, xs[i], us[i]) for i in range(160, 200)]) / 25
    pyro.set_rng_seed(0)
    m = build_model(ModelConfig("lgssm", x_dim=1, u_dim=1, z_dim=1))
    Trainer(m, TrainConfig(epochs=60, batch_size=40, lr=2e-2, patience=0), (xs[:160], us[:160]),
            (xs[160:], us[160:])).fit(progress=False)
    fitted = evaluate(m, xs[160:], us[160:])["neg_elbo_per_step"]
    assert abs(fitted - exact_nll) < 0.03, (fitted, exact_nll)


def test_lgssm_predict_and_generate_shapes():
    m = _model()
    batch = collate([torch.randn(5, 3), torch.randn(3, 3)], [torch.randn(5, 1), torch.randn(3, 1)])
    p = m.predict(batch, torch.randn(2, 4, 1), 4, num_samples=6)
    assert p["x"].shape == (6, 2, 4, 3) and p["z"].shape == (6, 2, 4, 2)
    g = m.generate(7, u=torch.zeros(7, 1), num_samples=3)
    assert g["x"].shape == (3, 7, 3)
    assert m.encode(batch, 5)["z"].shape == (5, 2, 5, 2)
