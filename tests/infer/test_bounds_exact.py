"""The ELBO and importance-weighted bounds against the exact log-likelihood.

The model is a DMM whose generative networks ARE a known linear-Gaussian system
(``linear_gaussian_dmm``), so its exact log p(x | u) is the Kalman filter's; its guide is fitted for
a few seconds (generative networks frozen), so the bounds are reasonably tight yet still random.
Tolerances are Monte Carlo standard errors: each bound is estimated R times with fresh draws, and a
claim E[a] <= E[b] is asserted as mean(a) <= mean(b) + 3 * sqrt(se_a^2 + se_b^2) (se = std / sqrt(R)
of the per-repeat means over the sequences); the exact value has no error.
"""

import math

import numpy as np
import pytest
import torch

from dvae.data.batch import collate
from dvae.eval.exact import LGSSMParams, kalman_log_likelihood, sample_lgssm
from dvae.models.dmm import linear_gaussian_dmm
from dvae.infer.elbo import DynamicalELBO, elbo_terms, iw_bound

TRUE = LGSSMParams(np.array([[0.9, 0.1], [-0.1, 0.8]]), np.array([[0.5], [0.0]]), np.array([[1.0, 0.0], [0.3, 1.0]]),
                   np.diag([0.09, 0.04]), np.diag([0.25, 0.16]), np.zeros(2), np.eye(2))
R = 6  # repeats of every estimate


@pytest.fixture(scope="module")
def fitted():
    """(model, held-out batch, exact log-likelihoods (B,)) with the guide fitted on 64 training sequences."""
    rng = np.random.default_rng(0)
    xs, us, _ = sample_lgssm(TRUE, 80, 10, rng)
    xs, us = torch.tensor(xs, dtype=torch.float32), torch.tensor(us, dtype=torch.float32)
    train, test = collate(list(xs[:64]), list(us[:64])), collate(list(xs[64:]), list(us[64:]))
    exact = np.array([kalman_log_likelihood(TRUE, xs[i].double().numpy(), us[i].double().numpy())
                      for i in range(64, 80)])
    torch.manual_seed(0)
    model = linear_gaussian_dmm(TRUE, rnn_dim=16)
    guide_params = [p for n, p in model.named_parameters() if n.split(".")[0] in ("encoder", "combiner", "z_q_0")]
    opt = torch.optim.Adam(guide_params, lr=1e-2)
    loss_fn = DynamicalELBO()
    for _ in range(150):
        opt.zero_grad()
        loss_fn.differentiable_loss(model.model_vectorized, model.guide_vectorized, train).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, test, exact


def _repeats(fn):
    """R repeated estimates of a per-sequence bound, as per-repeat means over the sequences: (mean, se)."""
    vals = np.array([fn().mean().item() for _ in range(R)])
    return vals.mean(), vals.std(ddof=1) / math.sqrt(R)


def _iw(model, batch, K):
    return lambda: iw_bound(model.model_vectorized, model.guide_vectorized, batch, K, chunk=500)


def test_elbo_below_iw_below_exact_and_iw_tightens_with_k(fitted):
    model, batch, exact = fitted
    exact_mean = exact.mean()
    torch.manual_seed(1)
    elbo, se_elbo = _repeats(lambda: elbo_terms(model.model_vectorized, model.guide_vectorized, batch)["elbo"])
    iw = {K: _repeats(_iw(model, batch, K)) for K in (1, 10, 100)}

    def below(a, b):  # E[a] <= E[b] within 3 Monte Carlo standard errors
        (ma, sa), (mb, sb) = a, b
        return ma <= mb + 3 * math.hypot(sa, sb)

    # every bound below the exact log-likelihood (which has no Monte Carlo error)
    assert below((elbo, se_elbo), (exact_mean, 0.0))
    for K in iw:
        assert below(iw[K], (exact_mean, 0.0)), (K, iw[K], exact_mean)
    # ELBO <= IW_K, and IW_1 has the ELBO's expectation (the analytic KL only lowers the variance)
    assert below((elbo, se_elbo), iw[10]) and below((elbo, se_elbo), iw[100])
    assert abs(iw[1][0] - elbo) <= 3 * math.hypot(iw[1][1], se_elbo) + 1e-3
    # the IW bound tightens with K on average (strictly, for a guide that is not the posterior)
    assert iw[1][0] < iw[10][0] < iw[100][0]
    assert below(iw[1], iw[10]) and below(iw[10], iw[100])
    # the fitted guide leaves a gap of nats (so the orderings above are not ties), and K = 100 closes
    # a good part of it (measured: ELBO gap ~7.2 nats per sequence, IW_100 gap ~2.2, IW_1000 ~1.6)
    gap = exact_mean - elbo
    assert gap > 1.0 and exact_mean - iw[100][0] < 0.75 * gap, (gap, exact_mean - iw[100][0])


def test_iw_bound_at_k_1000_stays_below_exact_and_closes_most_of_the_gap(fitted):
    # per sequence the log of the K-sample estimate can exceed log p(x) (its weights are heavy-tailed
    # under a guide narrower than the posterior); on average over repeats and sequences it cannot
    model, batch, exact = fitted
    torch.manual_seed(2)
    elbo = elbo_terms(model.model_vectorized, model.guide_vectorized, batch, num_particles=8)["elbo"].mean().item()
    iw, se = _repeats(_iw(model, batch, 1000))
    assert iw <= exact.mean() + 3 * se, (iw, se, exact.mean())
    assert exact.mean() - iw < 0.5 * (exact.mean() - elbo), (exact.mean() - iw, exact.mean() - elbo)
