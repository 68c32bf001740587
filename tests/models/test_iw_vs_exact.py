"""Every family's importance-weighted bound against the exact log-likelihood of a known system.

Data: the linear-Gaussian system of ``envs.linear_gaussian`` (its default parameters), whose exact
log p(x | u) is the project's Kalman oracle (``dvae.eval.exact.kalman_log_likelihood``). A model of
each family is trained briefly on one set of sequences and bounded on another. On held-out data from
the true system, E[log p_model(x | u)] <= E[log p_true(x | u)] (Gibbs' inequality: the gap is the KL
from the true distribution to the model's) and the IW bound is below log p_model, so the mean over
sequences of d = IW bound - exact has an expectation <= 0. Asserted with its Monte Carlo error: the
mean of d at most 3 standard errors (std of d / sqrt(n), which holds the data's and the draws'
randomness) above 0. A bound that left out a KL term, double counted a likelihood or mis-normalised a
density would rise above it. Parametrized over the registry, so a family added to ``MODELS`` is
checked without editing this file.

Measured (seed 0, 200 updates, K = 32; mean d and its standard error, nats per 10-step sequence): the
LGSSM -0.06 +- 0.07 (it learns the system), STORN -4.7, VRNN -5.3, SRNN -5.4, RSSM -5.9, DMM -7.4,
DSAE -11.7, RVAE -12.6, VRAE -19.9, VAE -26.4 (standard errors 0.5-3.3).
"""

import math

import numpy as np
import pyro
import pytest
import torch

from dvae.data.batch import collate
from dvae.eval.exact import kalman_log_likelihood, sample_lgssm
from dvae.infer import DynamicalELBO, iw_bound
from dvae.models import MODELS, ModelConfig, build_model
from envs.linear_gaussian import LinearGaussianParams

SYSTEM = LinearGaussianParams()  # the env's default system: z 2-D rotating and damped, x 2-D, u 1-D
N_TRAIN, N_TEST, LENGTH = 48, 64, 10
UPDATES, K = 200, 32  # brief full-batch training; IW samples per test sequence


@pytest.fixture(scope="module")
def data():
    """(training batch, test batch, exact log p(x | u) of each test sequence (N_TEST,))."""
    M = SYSTEM.matrices()
    xs, us, _ = sample_lgssm(M, N_TRAIN + N_TEST, LENGTH, np.random.default_rng(0), u_scale=0.5)
    exact = np.array([kalman_log_likelihood(M, xs[i], us[i]) for i in range(N_TRAIN, N_TRAIN + N_TEST)])
    seqs = lambda a: [torch.tensor(s, dtype=torch.float32) for s in a]  # noqa: E731
    train = collate(seqs(xs[:N_TRAIN]), seqs(us[:N_TRAIN]))
    test = collate(seqs(xs[N_TRAIN:]), seqs(us[N_TRAIN:]))
    return train, test, exact


@pytest.mark.slow  # about 90 s on one CPU core for the ten families (200 full-batch updates each)
@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_trained_models_iw_bound_is_no_better_than_the_exact_log_likelihood(family, data):
    train, test, exact = data
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    m = build_model(ModelConfig(family, x_dim=SYSTEM.x_dim, u_dim=SYSTEM.u_dim, z_dim=SYSTEM.z_dim, rnn_dim=16,
                                transition_dim=16, emission_dim=16))
    model, guide = m.programs(vectorized=True)
    opt = torch.optim.Adam(m.parameters(), lr=m.default_lr)
    elbo = DynamicalELBO()
    with torch.no_grad():
        before = iw_bound(model, guide, test, K, chunk=K).mean().item()
    for _ in range(UPDATES):
        opt.zero_grad()
        elbo.differentiable_loss(model, guide, train).backward()
        opt.step()
    with torch.no_grad():
        bound = iw_bound(model, guide, test, K, chunk=K).double().numpy()  # (N_TEST,)
    d = bound - exact
    assert np.isfinite(d).all()
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert d.mean() <= 3 * se, (family, d.mean(), se)
    # the training did something: the bound rose (so the inequality is not met by an untrained model alone)
    assert bound.mean() > before, (family, before, bound.mean())
