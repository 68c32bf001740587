"""The bootstrap particle filter against the Kalman filter's exact log-likelihood."""

import math

import numpy as np
import pytest
import torch

from dvae.data.batch import SequenceBatch, collate
from dvae.eval.exact import LGSSMParams, kalman_log_likelihood, sample_lgssm
from dvae.models.dmm import linear_gaussian_dmm
from dvae.infer.elbo import iw_bound
from dvae.infer.smc import (evaluate_pf, filter_for, lgssm_particle_filter, model_particle_filter, particle_filter,
                            systematic_resample)
from dvae.models import DynamicalVAE, ModelConfig, build_model

# a 2-D latent, 2-D observation, 1-D control; diagonal noise so the DMM can carry it exactly
TRUE = LGSSMParams(np.array([[0.9, 0.1], [-0.1, 0.8]]), np.array([[0.5], [0.0]]), np.array([[1.0, 0.0], [0.3, 1.0]]),
                   np.diag([0.09, 0.04]), np.diag([0.25, 0.16]), np.zeros(2), np.eye(2))


def _data(n=8, steps=20, seed=0, dtype=torch.float64):
    xs, us, _ = sample_lgssm(TRUE, n, steps, np.random.default_rng(seed))
    exact = np.array([kalman_log_likelihood(TRUE, xs[i], us[i]) for i in range(n)])
    batch = collate([torch.tensor(x, dtype=dtype) for x in xs], [torch.tensor(u, dtype=dtype) for u in us])
    return batch, exact


def test_pf_log_likelihood_approaches_kalman_as_particles_grow():
    batch, exact = _data()
    torch.manual_seed(0)
    err = {}
    for n in (10, 100, 1000, 10000):
        est = np.stack([lgssm_particle_filter(TRUE, batch, n).numpy() for _ in range(3)])  # (3, 8)
        err[n] = np.abs(est - exact).mean()  # nats per 20-step sequence
    assert err[10] > err[100] > err[1000] > err[10000], err  # measured 4.8 > 0.72 > 0.17 > 0.07
    assert err[10000] < 0.2, err  # 0.01 nats per step


def test_pf_is_a_lower_bound_on_average_with_few_particles():
    # E[Z_hat] = p(x) so E[log Z_hat] <= log p(x) (Jensen); with 10 particles the bias is nats
    batch, exact = _data()
    torch.manual_seed(1)
    est = np.stack([lgssm_particle_filter(TRUE, batch, 10).numpy() for _ in range(20)])  # (20, 8)
    se = est.mean(1).std(ddof=1) / math.sqrt(len(est))
    assert est.mean() < exact.mean() - 3 * se


def test_dmm_adapter_on_a_dmm_that_is_the_linear_system_converges_to_kalman():
    batch, exact = _data(dtype=torch.float32)
    model = linear_gaussian_dmm(TRUE)
    torch.manual_seed(0)
    est = np.stack([model_particle_filter(model, batch, 10000).numpy() for _ in range(2)])
    assert np.abs(est - exact).mean() < 0.2


def test_dmm_adapter_ragged_batch_gives_each_sequence_its_own_likelihood():
    xs, us, _ = sample_lgssm(TRUE, 3, 12, np.random.default_rng(3))
    lengths = [12, 7, 3]
    xs = [torch.tensor(xs[i, :L], dtype=torch.float32) for i, L in enumerate(lengths)]
    us = [torch.tensor(us[i, :L], dtype=torch.float32) for i, L in enumerate(lengths)]
    exact = np.array([kalman_log_likelihood(TRUE, x.double().numpy(), u.double().numpy()) for x, u in zip(xs, us)])
    model = linear_gaussian_dmm(TRUE)
    batch = collate(xs, us)
    torch.manual_seed(0)
    est = np.stack([model_particle_filter(model, batch, 5000).numpy() for _ in range(2)])
    assert np.abs(est - exact).max() < 0.25, (est, exact)
    # padded steps contribute nothing: garbage in the padding leaves every estimate unchanged, draw for draw
    noisy = batch.x.clone()
    noisy[~batch.mask] = 1e3
    torch.manual_seed(5)
    clean = model_particle_filter(model, batch, 64)
    torch.manual_seed(5)
    dirty = model_particle_filter(model, batch._replace(x=noisy), 64)
    assert torch.equal(clean, dirty)


def test_dmm_adapter_padded_sequence_equals_the_unpadded_one_draw_for_draw():
    torch.manual_seed(0)
    model = build_model(ModelConfig("dmm", x_dim=2, u_dim=1, z_dim=3, rnn_dim=8, transition_dim=8, emission_dim=8))
    x, u = torch.randn(1, 5, 2), torch.randn(1, 5, 1)
    plain = SequenceBatch(x, u, torch.ones(1, 5, dtype=torch.bool), torch.tensor([5]))
    pad = 4  # padded steps at the end, holding values the filter must not see
    padded = SequenceBatch(torch.cat([x, 50 * torch.ones(1, pad, 2)], 1), torch.cat([u, torch.ones(1, pad, 1)], 1),
                           torch.arange(5 + pad)[None] < 5, torch.tensor([5]))
    torch.manual_seed(1)
    a = model_particle_filter(model, plain, 100, ess_threshold=1.0)
    torch.manual_seed(1)
    b = model_particle_filter(model, padded, 100, ess_threshold=1.0)
    assert torch.equal(a, b) and torch.isfinite(a).all()


def test_vrnn_adapter_agrees_with_the_iw_bound_at_many_samples():
    # both estimate the same log p(x) of a (random) VRNN: the PF from the prior, the IW bound from the guide
    torch.manual_seed(0)
    model = build_model(ModelConfig("vrnn", x_dim=2, u_dim=1, z_dim=1, rnn_dim=8, transition_dim=8, emission_dim=8))
    batch = SequenceBatch(torch.randn(4, 3, 2), torch.randn(4, 3, 1), torch.ones(4, 3, dtype=torch.bool),
                          torch.tensor([3, 3, 3, 3]))
    pf = torch.stack([model_particle_filter(model, batch, 20000) for _ in range(2)]).mean(0)
    iw = iw_bound(model.model_vectorized, model.guide_vectorized, batch, 20000, chunk=5000)
    assert torch.allclose(pf, iw, atol=0.05), (pf, iw)


def test_systematic_resampling_gives_each_particle_floor_or_ceil_of_its_expected_offspring():
    torch.manual_seed(0)
    w = torch.distributions.Dirichlet(torch.ones(50)).sample((4,))  # (4, 50)
    idx = systematic_resample(w.log())
    counts = torch.stack([torch.bincount(i, minlength=50) for i in idx]).double()
    expected = 50 * w.double()
    assert ((counts >= expected.floor() - 1e-9) & (counts <= expected.ceil() + 1e-9)).all()


def test_evaluate_pf_reports_data_units_and_refuses_other_families():
    batch, exact = _data(n=4, dtype=torch.float32)
    model = linear_gaussian_dmm(TRUE)
    xs = [batch.x[i].numpy() * 2.0 for i in range(4)]  # data in units twice the model's: log-Jacobian 2 log 2
    us = [batch.u[i].numpy() for i in range(4)]
    torch.manual_seed(0)
    out = evaluate_pf(model, [x / 2.0 for x in xs], us, 4000, log_det_per_step=2 * math.log(2.0))
    assert out["num_steps"] == 80
    assert out["nll_pf_per_step"] == pytest.approx(-exact.sum() / 80 + 2 * math.log(2.0), abs=0.02)
    assert filter_for(build_model(ModelConfig("vrae", x_dim=2))) is model_particle_filter  # every family

    class NoDynamics(DynamicalVAE):  # a family that states no contract
        pass

    with pytest.raises(ValueError, match="states its dynamics"):
        filter_for(NoDynamics(ModelConfig("dmm", x_dim=2)))
    with pytest.raises(ValueError, match="at least 1 particle"):
        particle_filter(lambda P: torch.zeros(1, P, 1), None, None, torch.ones(1, 2, dtype=torch.bool), 0)


def test_the_filter_through_the_contract_of_an_lgssm_model_converges_to_its_exact_likelihood():
    """The LGSSM family's contract (initial_state, transition_step, emission) run as particles gives the
    likelihood its own Kalman filter computes exactly."""
    batch, exact = _data(n=4)
    model = build_model(ModelConfig("lgssm", x_dim=2, u_dim=1, z_dim=2)).double()
    model.set_params(TRUE.A, TRUE.B, TRUE.C, TRUE.Q, TRUE.R, TRUE.m0, TRUE.P0)
    torch.manual_seed(0)
    est = torch.stack([model_particle_filter(model, batch, 20000) for _ in range(2)]).mean(0)
    np.testing.assert_allclose(est.numpy(), exact, atol=0.1)


def test_the_filter_runs_the_vraes_code_and_decoder_as_particles():
    """The VRAE's particles are codes with their decoder states: with one particle and the code fixed
    by hand, log Z_hat is exactly the model's log p(x | z) for that code."""
    torch.manual_seed(0)
    model = build_model(ModelConfig("vrae", x_dim=2, u_dim=1, z_dim=3, rnn_dim=8, emission_dim=8,
                                    transition_dim=8)).double().eval()
    batch, _ = _data(n=3, steps=6)
    code = torch.randn(3, 3, dtype=torch.float64)
    from pyro import poutine

    trace = poutine.trace(poutine.condition(model.model, data={"z": code})).get_trace(batch)
    log_lik = sum(trace.nodes[f"x_{t}"]["fn"].log_prob(batch.x[:, t]) for t in range(6))  # (3,)
    original = model.initial_state

    def fixed_code(n, c=None):  # p(z) replaced by a point mass at the code
        import pyro.distributions as dist
        state, _ = original(n, c)
        return state, dist.Delta(code, event_dim=1)

    model.initial_state = fixed_code
    torch.testing.assert_close(model_particle_filter(model, batch, 1), log_lik, rtol=1e-9, atol=1e-9)
