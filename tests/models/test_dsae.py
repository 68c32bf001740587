"""DSAE: the ELBO of a tiny case (the static code's KL included) against a hand computation of the
generative story and the guide, the contract's consumers against the contract stepped by hand, and
what is particular to the family (v fixed along a sequence, the guide's v in posterior_last)."""

import pyro
import pytest
import torch
from pyro import poutine

from dvae.data import collate
from dvae.infer import elbo_terms
from dvae.infer.diagnostics import latent_report
from dvae.models import ModelConfig, build_model
from tests.models.contract_checks import (B, T, X, Z, assert_elbo_matches, check_generate_is_the_contract_by_hand,
                                          check_one_particle_filter_is_the_prior_path_by_hand,
                                          check_predict_and_world_model_run, normal_kl, normal_log_pdf, tiny,
                                          tiny_batch)

V, C = 3, 2  # the static code's size in the hand computation (not z_dim), and the condition's


@pytest.mark.parametrize("u_dim", [0, 1])
@pytest.mark.parametrize("c_dim", [0, C])
def test_elbo_equals_the_hand_computation(u_dim, c_dim):
    m = tiny("dsae", u_dim, v_dim=V, c_dim=c_dim)
    batch = tiny_batch(u_dim)
    if c_dim:
        batch = batch._replace(c=torch.randn(B, c_dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    x = batch.x  # (B, T, X); every sequence has all T steps
    with torch.no_grad():
        y = torch.cat([x] + ([batch.u] if u_dim else []), -1)  # [x_t, u_t]
        y = torch.cat([y, batch.c[:, None].expand(B, T, c_dim)], -1) if c_dim else y  # [x_t, u_t, c]
        # q(v | x, u, c): forward RNN's last state, backward RNN's state at step 0
        e = torch.cat([m.v_encoder.rnn(y)[0][:, -1], m.v_encoder.rnn_back(y.flip(1))[0][:, -1]], -1)
        loc_v, scale_v = m.v_posterior(e)
        pyro.set_rng_seed(8)  # the guide's normals: v's block, then one (B, Z) block a step
        eps_v = torch.empty(B, V, dtype=torch.float64).normal_()
        eps = [torch.empty(B, Z, dtype=torch.float64).normal_() for _ in range(T)]
        v = loc_v + eps_v * scale_v
        # q(z_t | x, u, v, c): a bidirectional RNN over [x_t, u_t, c, v]
        yv = torch.cat([y, v[:, None].expand(B, T, V)], -1)
        g = torch.cat([m.z_encoder.rnn(yv)[0], m.z_encoder.rnn_back(yv.flip(1))[0].flip(1)], -1)  # (B, T, 2 rnn)
        loc_q, scale_q = m.z_posterior(g)
        # the prior: h_0 learned, h_t = f(h_{t-1}, [z_{t-1}, u_{t-1}]), p(z_t | h_t, c); p(v) = N(0, I)
        h, log_lik, kl, log_prior = m.recurrence.h_0.expand(B, -1), [], [], []
        for t in range(T):
            z = loc_q[:, t] + eps[t] * scale_q[:, t]
            if t:
                h = m.recurrence.cell(torch.cat([z_prev] + ([batch.u[:, t - 1]] if u_dim else []), -1), h)
            loc_p, scale_p = m.prior(torch.cat([h] + ([batch.c] if c_dim else []), -1))
            loc_x, scale_x = m.emitter(torch.cat([z, v] + ([batch.c] if c_dim else []), -1))  # p(x_t | z_t, v, c)
            log_lik.append(normal_log_pdf(x[:, t], loc_x, scale_x))
            kl.append(normal_kl(loc_q[:, t], scale_q[:, t], loc_p, scale_p))
            log_prior.append(normal_log_pdf(z, loc_p, scale_p))
            z_prev = z
        ones = torch.ones_like(loc_v)
        kl[0] = kl[0] + normal_kl(loc_v, scale_v, 0 * ones, ones)  # the code's KL, put at step 0
    assert_elbo_matches(m, batch, 8, log_lik, kl, log_prior)
    # the vectorized programs: the same terms on the same seed
    pyro.set_rng_seed(8)
    terms = elbo_terms(m.model_vectorized, m.guide_vectorized, batch)
    torch.testing.assert_close(terms["log_lik"], torch.stack(log_lik, 1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(terms["kl"], torch.stack(kl, 1), rtol=1e-10, atol=1e-10)


def test_the_code_is_one_per_sequence_and_the_z_guide_reads_the_whole_sequence():
    m = tiny("dsae")
    batch = tiny_batch()
    later = batch._replace(x=torch.cat([batch.x[:, :2], batch.x[:, 2:] + 5.0], 1))
    v = torch.zeros(B, m.v_dim, dtype=torch.float64)
    assert not torch.allclose(m.dynamic_params(batch, v)[0][:, 0], m.dynamic_params(later, v)[0][:, 0])
    assert not torch.allclose(m.code_params(batch)[0], m.code_params(later)[0])
    pyro.set_rng_seed(0)
    g = m.generate(4, u=torch.zeros(4, 1, dtype=torch.float64), num_samples=3)
    assert g["z"].shape == (3, 4, Z)
    # v enters the state at step 0 and every later step keeps it
    state, p = m.initial_state(3)
    v0 = state["v"]
    for t in range(3):
        state = m.with_latent(state, p.sample())
        zeros = lambda d: torch.zeros(3, d, dtype=torch.float64)  # noqa: E731
        state, p = m.transition_step(state, zeros(X), zeros(1))
        assert torch.equal(state["v"], v0)


def test_the_code_size_defaults_to_z_dim_and_a_negative_one_is_refused():
    assert build_model(ModelConfig("dsae", z_dim=5)).v_dim == 5
    assert build_model(ModelConfig("dsae", z_dim=5, v_dim=7)).v_dim == 7
    with pytest.raises(ValueError, match="v_dim must be >= 0"):
        build_model(ModelConfig("dsae", v_dim=-1))


@pytest.mark.parametrize("u_dim", [0, 1])
def test_generate_is_the_contract_run_by_hand(u_dim):
    check_generate_is_the_contract_by_hand(tiny("dsae", u_dim, v_dim=V), u_dim)


def test_the_particle_filter_runs_the_contract():
    check_one_particle_filter_is_the_prior_path_by_hand(tiny("dsae", v_dim=V), tiny_batch())


def test_predict_and_the_world_model_run_through_the_contract():
    check_predict_and_world_model_run(tiny("dsae", v_dim=V))


def test_posterior_last_starts_from_the_guides_code():
    """The state after a context holds the v and z_{T-1} the guide draws on the same seed (not the prior's v)."""
    m = tiny("dsae", v_dim=V)
    batch = tiny_batch()
    pyro.set_rng_seed(3)
    state, x_last = m.posterior_last(batch)
    pyro.set_rng_seed(3)
    trace = poutine.trace(m.guide).get_trace(batch)
    torch.testing.assert_close(state["v"], trace.nodes["v"]["value"], rtol=0, atol=0)
    torch.testing.assert_close(state["z"], trace.nodes[f"z_{T - 1}"]["value"], rtol=0, atol=0)
    torch.testing.assert_close(x_last, batch.x[:, -1], rtol=0, atol=0)
    enc = m.encode(batch, num_samples=4)
    assert enc["v"].shape == (4, B, V) and enc["z"].shape == (4, B, T, Z)


def test_the_emission_path_needs_the_guides_code():
    m = tiny("dsae")
    batch = tiny_batch()
    with pytest.raises(ValueError, match="sequence code v"):
        m.emission_path(batch, torch.zeros(B, T, Z, dtype=torch.float64))


def test_the_latent_report_lists_the_code_and_the_dynamic_latents_apart():
    """KL per dimension: v's V entries, then z's Z; they sum to the KL per step of elbo_terms."""
    m = tiny("dsae", 0, v_dim=V)
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(L, X, generator=g, dtype=torch.float64).numpy() for L in (4, 3, 5)]
    for vectorized in (False, True):
        report = latent_report(m, xs, None, batch_size=8, vectorized=vectorized)
        assert len(report["kl_per_dim"]) == V + Z and len(report["posterior_mean_var"]) == V + Z
    batch = collate([torch.from_numpy(x) for x in xs])
    with torch.no_grad():
        loc_v, scale_v = m.code_params(batch)
        ones = torch.ones_like(loc_v)
        kl_v = normal_kl(loc_v, scale_v, 0 * ones, ones)  # (B,), closed form given x only
    report = latent_report(m, xs, None, batch_size=8)
    assert sum(report["kl_per_dim"][:V]) == pytest.approx(kl_v.sum().item() / 12, rel=1e-5)
