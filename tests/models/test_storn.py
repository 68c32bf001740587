"""STORN: the ELBO of a tiny case against a hand computation of the generative story and the guide,
and the consumers of the state-space contract against the contract stepped by hand."""

import pytest
import torch

from tests.models.contract_checks import (B, T, Z, assert_elbo_matches, check_generate_is_the_contract_by_hand,
                                          check_one_particle_filter_is_the_prior_path_by_hand,
                                          check_predict_and_world_model_run, draws, normal_kl, normal_log_pdf,
                                          tiny, tiny_batch)


@pytest.mark.parametrize("u_dim", [0, 1])
def test_elbo_equals_the_hand_computation(u_dim):
    m = tiny("storn", u_dim)
    batch = tiny_batch(u_dim)
    x = batch.x  # (B, T, X)
    zeros = lambda d: x.new_zeros(B, d)  # noqa: E731
    u_prev = [zeros(u_dim) if t == 0 else batch.u[:, t - 1] for t in range(T)] if u_dim else [zeros(0)] * T
    x_prev = [zeros(x.shape[-1]) if t == 0 else x[:, t - 1] for t in range(T)]
    with torch.no_grad():
        # guide: g_t = GRU over [x_t, u_{t-1}]; q(z_t | g_t); z_t = loc + eps * scale
        g = m.encoder.rnn(torch.stack([torch.cat([x[:, t], u_prev[t]], -1) for t in range(T)], 1))[0]
        loc_q, scale_q = m.posterior(g)  # (B, T, Z)
        eps = draws(5, (B, Z))
        z = [loc_q[:, t] + eps[t] * scale_q[:, t] for t in range(T)]
        # model: z_t ~ N(0, I); h_t = f(h_{t-1}, [x_{t-1}, u_{t-1}, z_t]); x_t ~ N(Emitter(h_t))
        h = m.recurrence.h_0.expand(B, -1)
        log_lik, kl, log_prior = [], [], []
        for t in range(T):
            h = m.recurrence.cell(torch.cat([x_prev[t], u_prev[t], z[t]], -1), h)
            loc_x, scale_x = m.emitter(h)
            log_lik.append(normal_log_pdf(x[:, t], loc_x, scale_x))
            kl.append(normal_kl(loc_q[:, t], scale_q[:, t], zeros(Z), zeros(Z) + 1))
            log_prior.append(normal_log_pdf(z[t], zeros(Z), zeros(Z) + 1))
    assert_elbo_matches(m, batch, 5, log_lik, kl, log_prior)


def test_the_guide_filters_it_does_not_read_later_observations():
    m = tiny("storn")
    batch = tiny_batch()
    later = batch._replace(x=torch.cat([batch.x[:, :2], batch.x[:, 2:] + 5.0], 1))
    a, b = m.posterior_params(batch), m.posterior_params(later)
    torch.testing.assert_close(a[0][:, :2], b[0][:, :2], rtol=0, atol=0)
    assert not torch.allclose(a[0][:, 2], b[0][:, 2])


@pytest.mark.parametrize("u_dim", [0, 1])
def test_generate_is_the_contract_run_by_hand(u_dim):
    check_generate_is_the_contract_by_hand(tiny("storn", u_dim), u_dim)


def test_the_particle_filter_runs_the_contract():
    check_one_particle_filter_is_the_prior_path_by_hand(tiny("storn"), tiny_batch())


def test_predict_and_the_world_model_run_through_the_contract():
    check_predict_and_world_model_run(tiny("storn"))
