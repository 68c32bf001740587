"""RSSM: the ELBO of a tiny case against a hand computation of the generative story and the guide, KL
balancing's gradients against their definition, and the consumers of the state-space contract against
the contract stepped by hand."""

import pyro
import pytest
import torch

from dvae.infer import DynamicalELBO
from dvae.models import ModelConfig, build_model
from tests.models.contract_checks import (B, T, Z, assert_elbo_matches, check_generate_is_the_contract_by_hand,
                                          check_one_particle_filter_is_the_prior_path_by_hand,
                                          check_predict_and_world_model_run, draws, normal_kl, normal_log_pdf,
                                          tiny, tiny_batch)


@pytest.mark.parametrize("kl_balance", [0.0, 0.8])
@pytest.mark.parametrize("u_dim", [0, 1])
def test_elbo_equals_the_hand_computation(u_dim, kl_balance):
    m = tiny("rssm", u_dim, kl_balance=kl_balance)  # balancing changes gradients, not the value
    batch = tiny_batch(u_dim)
    x = batch.x  # (B, T, X)
    with torch.no_grad():
        eps = draws(2, (B, Z))
        h = m.recurrence.h_0.expand(B, -1)  # h_0
        log_lik, kl, log_prior = [], [], []
        for t in range(T):
            if t:  # h_t = f(h_{t-1}, [z_{t-1}, u_{t-1}])
                h = m.recurrence.cell(torch.cat([z] + ([batch.u[:, t - 1]] if u_dim else []), -1), h)
            loc_p, scale_p = m.prior(h)  # p(z_t | h_t)
            loc_q, scale_q = m.posterior(torch.cat([h, x[:, t]], -1))  # q(z_t | h_t, x_t)
            z = loc_q + eps[t] * scale_q
            loc_x, scale_x = m.emitter(torch.cat([h, z], -1))  # p(x_t | h_t, z_t)
            log_lik.append(normal_log_pdf(x[:, t], loc_x, scale_x))
            kl.append(normal_kl(loc_q, scale_q, loc_p, scale_p))
            log_prior.append(normal_log_pdf(z, loc_p, scale_p))
    assert_elbo_matches(m, batch, 2, log_lik, kl, log_prior)


def _grads(m, vectorized, seed=3):
    m.zero_grad()
    pyro.set_rng_seed(seed)
    loss = DynamicalELBO().differentiable_loss(*m.programs(vectorized), tiny_batch())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("vectorized", [False, True])
def test_kl_balancing_splits_the_gradient_and_keeps_the_value(vectorized):
    """alpha KL(sg(q) || p) + (1 - alpha) KL(q || sg(p)): the prior's network (which enters the loss only
    through the KL) gets alpha times its plain gradient; the emitter (which does not enter the KL) its
    plain gradient; the posterior's network, pulled toward the prior with weight 1 - alpha, another."""
    plain = tiny("rssm")
    balanced = tiny("rssm", kl_balance=0.8)
    balanced.load_state_dict(plain.state_dict())
    loss_p, g_p = _grads(plain, vectorized)
    loss_b, g_b = _grads(balanced, vectorized)
    torch.testing.assert_close(loss_b, loss_p, rtol=1e-12, atol=0)
    for name in g_p:
        if name.startswith("prior."):
            torch.testing.assert_close(g_b[name], 0.8 * g_p[name], rtol=1e-10, atol=1e-12)
        elif name.startswith("emitter."):
            torch.testing.assert_close(g_b[name], g_p[name], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(g_b["posterior.net.0.weight"], g_p["posterior.net.0.weight"])


def test_kl_balancing_is_refused_outside_its_range_and_other_families():
    with pytest.raises(ValueError, match="kl_balance must be in"):
        build_model(ModelConfig("rssm", kl_balance=1.0))
    with pytest.raises(ValueError, match="kl_balance \\(KL balancing\\) is for rssm, not 'vrnn'"):
        build_model(ModelConfig("vrnn", kl_balance=0.8))


def test_the_model_never_reads_its_observations():
    """The state (h_t, z_t) is Markov under the controls: ``transition_step`` ignores x_{t-1}."""
    m = tiny("rssm")
    state, p = m.initial_state(B)
    state = m.with_latent(state, p.sample())
    u = torch.randn(B, 1, dtype=torch.float64)
    a = m.transition_step(state, torch.zeros(B, 2, dtype=torch.float64), u)
    b = m.transition_step(state, torch.randn(B, 2, dtype=torch.float64), u)
    torch.testing.assert_close(a[0]["rec"], b[0]["rec"], rtol=0, atol=0)


@pytest.mark.parametrize("u_dim", [0, 1])
def test_generate_is_the_contract_run_by_hand(u_dim):
    check_generate_is_the_contract_by_hand(tiny("rssm", u_dim), u_dim)


def test_the_particle_filter_runs_the_contract():
    check_one_particle_filter_is_the_prior_path_by_hand(tiny("rssm"), tiny_batch())


def test_predict_and_the_world_model_run_through_the_contract():
    check_predict_and_world_model_run(tiny("rssm", kl_balance=0.8))
