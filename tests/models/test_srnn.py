"""SRNN: the ELBO of a tiny case against a hand computation of the generative story and both guides
(dks, resq), and the consumers of the state-space contract against the contract stepped by hand."""

import pytest
import torch

from dvae.models import ModelConfig, build_model
from tests.models.contract_checks import (B, T, Z, assert_elbo_matches, check_generate_is_the_contract_by_hand,
                                          check_one_particle_filter_is_the_prior_path_by_hand,
                                          check_predict_and_world_model_run, draws, normal_kl, normal_log_pdf,
                                          tiny, tiny_batch)


@pytest.mark.parametrize("guide", ["dks", "resq"])
@pytest.mark.parametrize("u_dim", [0, 1])
def test_elbo_equals_the_hand_computation(guide, u_dim):
    m = tiny("srnn", u_dim, guide=guide)
    batch = tiny_batch(u_dim)
    x = batch.x  # (B, T, X)
    zeros = lambda d: x.new_zeros(B, d)  # noqa: E731
    with torch.no_grad():
        # d_0 = f(d_{-1}, 0), d_t = f(d_{t-1}, [x_{t-1}, u_{t-1}])
        d, rec = [], m.recurrence.h_0.expand(B, -1)
        for t in range(T):
            inp = torch.cat([x[:, t - 1]] + ([batch.u[:, t - 1]] if u_dim else []), -1) if t else zeros(m.inp_dim)
            rec = m.recurrence.cell(inp, rec)
            d.append(rec)
        # a_t: a backward GRU over [d_t, x_t] (every sequence has all T steps)
        rev = torch.stack([torch.cat([d[t], x[:, t]], -1) for t in reversed(range(T))], 1)
        a = m.encoder.rnn(rev)[0].flip(1)  # (B, T, rnn_dim)
        eps = draws(8, (B, Z))
        z_prev, log_lik, kl, log_prior = zeros(Z), [], [], []
        for t in range(T):
            loc_p, scale_p = m.prior(torch.cat([z_prev, d[t]], -1))  # p(z_t | z_{t-1}, d_t)
            loc_q, scale_q = m.posterior(torch.cat([z_prev, a[:, t]], -1))  # q(z_t | z_{t-1}, a_t)
            if guide == "resq":
                loc_q = loc_p + loc_q
            z = loc_q + eps[t] * scale_q
            loc_x, scale_x = m.emitter(torch.cat([z, d[t]], -1))  # p(x_t | z_t, d_t)
            log_lik.append(normal_log_pdf(x[:, t], loc_x, scale_x))
            kl.append(normal_kl(loc_q, scale_q, loc_p, scale_p))
            log_prior.append(normal_log_pdf(z, loc_p, scale_p))
            z_prev = z
    assert_elbo_matches(m, batch, 8, log_lik, kl, log_prior)


def test_the_guide_smooths_it_reads_later_observations():
    m = tiny("srnn")
    batch = tiny_batch()
    later = batch._replace(x=torch.cat([batch.x[:, :2], batch.x[:, 2:] + 5.0], 1))
    _, a = m._guide_inputs(batch)
    _, b = m._guide_inputs(later)
    assert not torch.allclose(a[:, 0], b[:, 0])  # a_0 summarises x_{0:T}


def test_an_unknown_guide_is_refused():
    with pytest.raises(ValueError, match="unknown SRNN guide 'ltr'"):
        build_model(ModelConfig("srnn", guide="ltr"))


@pytest.mark.parametrize("u_dim", [0, 1])
def test_generate_is_the_contract_run_by_hand(u_dim):
    check_generate_is_the_contract_by_hand(tiny("srnn", u_dim), u_dim)


def test_the_particle_filter_runs_the_contract():
    check_one_particle_filter_is_the_prior_path_by_hand(tiny("srnn"), tiny_batch())


def test_predict_and_the_world_model_run_through_the_contract():
    check_predict_and_world_model_run(tiny("srnn", guide="resq"))
