"""The static (frame-wise) VAE against exact answers.

With a linear Gaussian decoder x_t = W z_t + b + N(0, S), S = diag(s^2), the marginal of a frame is
p(x_t) = N(b, W W^T + S) and the posterior p(z_t | x_t) is Gaussian, so every term is known by hand:
log p(x) (the sum over real steps of the frames' log densities), the exact posterior and the gap
ELBO = log p(x) - KL(q(z | x) || p(z | x)). W is chosen with W^T S^-1 W diagonal, so the exact posterior
is diagonal and the model's own (diagonal) encoder can hold it exactly.
"""

import math

import pyro
import pytest
import torch
import torch.nn as nn

from dvae.data import collate
from dvae.infer import elbo_terms, iw_bound
from dvae.models import ModelConfig, build_model, repeat_batch
from dvae.nn import MIN_SCALE
from tests.conftest import make_batch

S_DIAG = torch.tensor([0.5, 0.8, 0.6], dtype=torch.float64)  # observation noise scales s
D = torch.tensor([1.5, 0.7], dtype=torch.float64)  # W^T S^-1 W = diag(D^2)
B_VEC = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)


def inv_positive(v):
    """The raw value whose ``dvae.nn.positive`` (softplus + MIN_SCALE) is ``v``."""
    return torch.log(torch.expm1(v - MIN_SCALE))


def linear_gaussian_vae():
    """A VAE (x_dim 3, z_dim 2, float64) whose decoder is x = W z + b + N(0, diag(s^2)); returns
    (model, W). Its encoder is left as built."""
    m = build_model(ModelConfig("vae", x_dim=3, u_dim=2, z_dim=2, rnn_dim=8, emission_dim=8)).double()
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 2, generator=g, dtype=torch.float64) / S_DIAG[:, None])
    W = S_DIAG[:, None] * q * D  # (3, 2): W^T S^-1 W = D q^T q D = diag(D^2)
    m.emitter.net = nn.Linear(2, 3).double()
    with torch.no_grad():
        m.emitter.net.weight.copy_(W)
        m.emitter.net.bias.copy_(B_VEC)
        m.emitter.raw_scale.copy_(inv_positive(S_DIAG))
    return m, W


def exact_posterior(W):
    """p(z_t | x_t) = N(M (x_t - b), diag(var)): (M (2, 3), var (2,))."""
    var = 1.0 / (1.0 + D ** 2)
    M = var[:, None] * W.T / S_DIAG ** 2  # Sigma W^T S^-1
    return M, var


def set_linear_encoder(m, M, var, shift=0.0, widen=1.0):
    """q(z_t | x_t) = N(M (x_t - b) + shift, diag(widen^2 var))."""
    m.encoder.net = nn.Linear(3, 4).double()
    with torch.no_grad():
        m.encoder.net.weight.zero_()
        m.encoder.net.weight[:2] = M
        m.encoder.net.bias[:2] = -M @ B_VEC + shift
        m.encoder.net.bias[2:] = inv_positive(widen * var.sqrt())


def exact_log_lik(W, batch):
    """log p(x) per sequence (B,), by hand: every real frame's log N(x_t; b, W W^T + S)."""
    C = W @ W.T + torch.diag(S_DIAG ** 2)
    r = batch.x - B_VEC  # (B, T, 3)
    maha = (r * torch.linalg.solve(C, r.unsqueeze(-1)).squeeze(-1)).sum(-1)  # (B, T)
    per_frame = -0.5 * (3 * math.log(2 * math.pi) + torch.logdet(C) + maha)
    return torch.where(batch.mask, per_frame, torch.zeros(())).sum(1)


def posterior_gap(W, batch, shift, widen):
    """KL(q(z | x) || p(z | x)) per sequence (B,), closed form: each frame's posterior is N(., diag(var))
    and q moves its mean by ``shift`` and its scale by ``widen``."""
    _, var = exact_posterior(W)
    per_dim = 0.5 * (widen ** 2 - 1 - 2 * math.log(widen) + shift ** 2 / var)  # (2,)
    return batch.lengths.to(torch.float64) * per_dim.sum()


def batch64():
    b = make_batch(lengths=(3, 2, 1), x_dim=3, u_dim=2)
    return b._replace(x=b.x.double() * 1.3, u=b.u.double())


def test_with_the_exact_posterior_the_iw_bound_is_the_exact_log_likelihood_for_any_sample_size():
    m, W = linear_gaussian_vae()
    set_linear_encoder(m, *exact_posterior(W))
    batch = batch64()
    exact = exact_log_lik(W, batch)
    for k in (1, 5):  # p(x, z) / q(z | x) = p(x) for every z: no variance at all
        torch.testing.assert_close(iw_bound(m.model, m.guide, batch, num_samples=k), exact, rtol=1e-10, atol=1e-10)
    pyro.set_rng_seed(0)
    elbo = elbo_terms(m.model, m.guide, batch, num_particles=4000)["elbo"]
    torch.testing.assert_close(elbo, exact, rtol=0, atol=0.03)  # E_q[log p(x | z)] - KL(q || p(z)) = log p(x)


@pytest.mark.parametrize("shift, widen", [(0.5, 1.0), (0.0, 1.8)])
def test_the_elbo_stays_below_the_exact_log_likelihood_and_the_iw_bound_approaches_it(shift, widen):
    m, W = linear_gaussian_vae()
    set_linear_encoder(m, *exact_posterior(W), shift=shift, widen=widen)  # a proposal wider than the posterior
    batch = batch64()
    exact = exact_log_lik(W, batch)
    gap = posterior_gap(W, batch, shift, widen)
    assert (gap > 0.5).all()
    pyro.set_rng_seed(1)
    draws = elbo_terms(m.model, m.guide, repeat_batch(batch, 4000))["elbo"].reshape(4000, -1)  # one-draw ELBOs
    elbo, se = draws.mean(0), draws.std(0) / math.sqrt(4000)
    assert ((elbo - (exact - gap)).abs() < 5 * se).all()  # ELBO = log p(x) - KL(q || posterior)
    assert (elbo + 5 * se < exact).all()
    pyro.set_rng_seed(2)
    iw = {}
    for k, reps in ((1, 400), (10, 100), (2000, 4)):  # the bound's mean over repeats, and its standard error
        draws = torch.stack([iw_bound(m.model, m.guide, batch, num_samples=k, chunk=2000) for _ in range(reps)])
        iw[k] = (draws.mean(0), draws.std(0) / math.sqrt(reps))
    assert ((iw[1][0] - (exact - gap)).abs() < 5 * iw[1][1]).all()  # K = 1: an unbiased ELBO estimate
    assert ((exact - iw[10][0]) < 0.5 * gap).all()
    assert ((exact - iw[2000][0]) < 0.1 * gap + 5 * iw[2000][1]).all()  # most of the gap closed ...
    assert ((exact - iw[2000][0]) > -5 * iw[2000][1] - 1e-3).all()  # ... and never above log p(x)


def test_the_vae_ignores_controls():
    m = build_model(ModelConfig("vae", x_dim=3, u_dim=2, z_dim=2, rnn_dim=8, emission_dim=8))
    batch = make_batch(lengths=(4, 2), u_dim=2)
    out = []
    for u in (batch.u, 5.0 * torch.randn_like(batch.u)):
        pyro.set_rng_seed(3)
        out.append(elbo_terms(m.model, m.guide, batch._replace(u=u))["elbo"])
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)


def test_the_vae_predicts_the_prior_marginal_whatever_the_context():
    m, W = linear_gaussian_vae()
    g = torch.Generator().manual_seed(4)
    a = collate([torch.randn(5, 3, generator=g, dtype=torch.float64)], [torch.zeros(5, 2, dtype=torch.float64)])
    b = collate([10 + torch.randn(2, 3, generator=g, dtype=torch.float64)], [torch.ones(2, 2, dtype=torch.float64)])
    preds = []
    for ctx in (a, b):
        pyro.set_rng_seed(5)
        preds.append(m.predict(ctx, torch.randn(1, 4, 2, dtype=torch.float64), horizon=4, num_samples=20000))
    torch.testing.assert_close(preds[0]["x"], preds[1]["x"], rtol=0, atol=0)  # the context is not used
    x = preds[0]["x"][:, 0].reshape(-1, 3)  # (S * H, 3): samples of the marginal N(b, W W^T + S)
    se = (torch.diag(W @ W.T) + S_DIAG ** 2).sqrt() / math.sqrt(len(x))
    assert ((x.mean(0) - B_VEC).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(x.T), W @ W.T + torch.diag(S_DIAG ** 2), rtol=0, atol=0.03)
    mean_pred = preds[0]["x_mean"].mean(0)[0]  # (H, 3): the open-loop prediction = the prior mean of x, every k
    assert ((mean_pred - B_VEC).abs() < 5 * (torch.diag(W @ W.T).sqrt() / math.sqrt(20000))).all()
