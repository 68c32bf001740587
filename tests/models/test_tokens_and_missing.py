"""The categorical emitter and missing observations, against hand computations and exact oracles."""

import math

import numpy as np
import pytest
import torch

from dvae.data import collate
from dvae.eval.exact import LGSSMParams, sample_lgssm
from dvae.infer import elbo_terms
from dvae.infer.evaluation import evaluate
from dvae.models import ModelConfig, build_model, repeat_batch

FAMILIES = ["dmm", "vrnn", "vrae", "storn", "srnn", "rssm", "dsae", "kvae"]


def fixed_emitter(m, bias):
    """Make the emitter ignore its input: its output is ``bias`` (the logits, or the Gaussian loc)."""
    with torch.no_grad():
        m.emitter.net[-1].weight.zero_()
        m.emitter.net[-1].bias.copy_(torch.as_tensor(bias, dtype=m.emitter.net[-1].bias.dtype))


@pytest.mark.parametrize("family", FAMILIES)
def test_per_token_bound_is_the_cross_entropy_of_a_fixed_emitter(family):
    V = 5
    m = build_model(ModelConfig(family, x_dim=V, z_dim=3, rnn_dim=8, transition_dim=8, emission_dim=8,
                                likelihood="categorical")).double()
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0, 1.5], dtype=torch.float64)
    fixed_emitter(m, logits)
    ids = [[0, 4, 4, 2, 1], [3, 1], [2, 2, 0, 4]]
    xs = [np.eye(V)[i] for i in ids]  # one-hot (L_i, V)
    batch = collate([torch.from_numpy(x) for x in xs])
    log_softmax = [2.0, -1.0, 0.5, 0.0, 1.5] - np.log(np.exp([2.0, -1.0, 0.5, 0.0, 1.5]).sum())  # by hand
    for vectorized in (False, True):
        terms = elbo_terms(*m.programs(vectorized), batch)
        for b, seq in enumerate(ids):
            np.testing.assert_allclose(terms["log_lik"][b, :len(seq)].numpy(), log_softmax[seq], rtol=1e-12)
            assert (terms["log_lik"][b, len(seq):] == 0).all()  # padding: no token, no cost
    out = evaluate(m, xs, None)
    cross_entropy = -np.mean([log_softmax[i] for seq in ids for i in seq])
    assert out["num_steps"] == 11
    assert out["recon_per_step"] == pytest.approx(cross_entropy, rel=1e-12)
    assert out["neg_elbo_per_step"] == pytest.approx(cross_entropy + out["kl_per_step"], rel=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_generated_tokens_are_one_hot_rows(family):
    m = build_model(ModelConfig(family, x_dim=6, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8,
                                likelihood="categorical"))
    x = m.generate(7, num_samples=4)["x"]
    assert x.shape == (4, 7, 6) and ((x == 0) | (x == 1)).all() and (x.sum(-1) == 1).all()


# --- missing entries ---------------------------------------------------------------------------------
def test_collate_turns_nan_into_an_observation_mask_that_repeat_and_to_carry():
    x0 = torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")], [3.0, 4.0]])
    x1 = torch.tensor([[5.0, 6.0]])
    b = collate([x0, x1])
    assert b.obs_mask.tolist() == [[[True, False], [False, False], [True, True]],
                                   [[True, True], [False, False], [False, False]]]  # padding: not observed
    assert not torch.isnan(b.x).any() and b.x[0, 1].tolist() == [0.0, 0.0]
    r = repeat_batch(b.to("cpu"), 3).check()
    assert torch.equal(r.obs_mask, b.obs_mask.repeat(3, 1, 1))
    assert collate([x1]).obs_mask is None  # nothing missing: no mask


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("missing_inputs", [False, True])
def test_partially_observed_likelihood_is_the_density_of_the_observed_entries(family, missing_inputs):
    m = build_model(ModelConfig(family, x_dim=3, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8,
                                missing=missing_inputs)).double()
    loc = np.array([0.3, -1.0, 2.0])
    fixed_emitter(m, loc)
    scale = (torch.nn.functional.softplus(m.emitter.raw_scale) + 1e-3).detach().numpy()  # the learned scale
    x = np.array([[0.1, np.nan, 1.0], [np.nan, np.nan, np.nan], [0.5, -2.0, np.nan], [1.0, 1.0, 1.0]])
    batch = collate([torch.from_numpy(x)])

    def log_normal(v, mu, s):  # by hand
        return -0.5 * ((v - mu) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)

    expected = [sum(log_normal(v, mu, s) for v, mu, s in zip(row, loc, scale) if not np.isnan(v)) for row in x]
    assert expected[1] == 0  # a step with every entry missing contributes no likelihood
    for vectorized in (False, True):
        terms = elbo_terms(*m.programs(vectorized), batch)
        np.testing.assert_allclose(terms["log_lik"][0].numpy(), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("family", ["dmm", "vrae"])
def test_the_value_held_in_a_missing_entry_reaches_no_term_of_the_model(family):
    """Given the latent path, the observation sites of the DMM and the VRAE read x only through the
    masked density: a missing entry holding 0 or 7 gives the same log-likelihood."""
    from pyro import poutine

    m = build_model(ModelConfig(family, x_dim=3, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8, missing=True))
    b = collate([torch.randn(6, 3), torch.randn(4, 3)])
    obs = (torch.rand(b.x.shape, generator=torch.Generator().manual_seed(0)) > 0.4) & b.mask[..., None]
    a = b._replace(x=torch.where(obs, b.x, torch.zeros(())), obs_mask=obs)
    c = a._replace(x=torch.where(obs, b.x, torch.full((), 7.0)))
    for model, guide in (m.programs(False), m.programs(True)):
        guide_trace = poutine.trace(guide).get_trace(a)
        lps = []
        for batch in (a, c):
            trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
            trace.compute_log_prob()
            lps.append(sum(s["log_prob"] for s in trace.nodes.values() if s["type"] == "sample" and s["is_observed"]))
        torch.testing.assert_close(lps[0], lps[1], rtol=0, atol=0)
        assert torch.isfinite(lps[0]).all()


# --- the exact LGSSM with missing entries, against a brute-force joint Gaussian ------------------------
def joint_gaussian(p: LGSSMParams, u, L):
    """Mean (L x_dim,) and covariance of x_0 .. x_{L-1} stacked, by unrolling the system."""
    means, covs = [p.m0], {(0, 0): p.P0}
    for t in range(1, L):
        means.append(p.A @ means[-1] + p.B @ u[t - 1])
        covs[(t, t)] = p.A @ covs[(t - 1, t - 1)] @ p.A.T + p.Q
    for s in range(L):
        for t in range(s + 1, L):
            covs[(t, s)] = p.A @ covs[(t - 1, s)]
    Z = np.block([[covs[(t, s)] if t >= s else covs[(s, t)].T for s in range(L)] for t in range(L)])
    Cb = np.kron(np.eye(L), p.C)
    return Cb @ np.concatenate(means), Cb @ Z @ Cb.T + np.kron(np.eye(L), p.R)


def lgssm_with(p: LGSSMParams):
    z, x, u = p.A.shape[0], p.C.shape[0], p.B.shape[1]
    m = build_model(ModelConfig("lgssm", x_dim=x, u_dim=u, z_dim=z)).double()
    return m.set_params(p.A, p.B, p.C, p.Q, p.R, p.m0, p.P0)


@pytest.fixture
def system():
    g = np.random.default_rng(3)
    z, x, u = 2, 3, 1
    S, Rm = g.standard_normal((z, z)), g.standard_normal((x, x))
    p = LGSSMParams(0.6 * g.standard_normal((z, z)), g.standard_normal((z, u)), g.standard_normal((x, z)),
                    S @ S.T + 0.1 * np.eye(z), Rm @ Rm.T + 0.1 * np.eye(x), g.standard_normal(z), np.eye(z))
    xs, us, _ = sample_lgssm(p, 1, 6, g)
    x_obs = xs[0].copy()
    x_obs[1, [0, 2]] = np.nan
    x_obs[3] = np.nan  # a whole step missing
    x_obs[5, 1] = np.nan
    return p, x_obs, us[0]


def test_lgssm_likelihood_with_missing_entries_is_the_marginal_of_the_observed_ones(system):
    p, x, u = system
    mean, cov = joint_gaussian(p, u, len(x))
    o = ~np.isnan(x.reshape(-1))
    r = x.reshape(-1)[o] - mean[o]
    c = cov[np.ix_(o, o)]
    exact = -0.5 * (r @ np.linalg.solve(c, r) + np.linalg.slogdet(c)[1] + o.sum() * math.log(2 * math.pi))
    m = lgssm_with(p)
    batch = collate([torch.from_numpy(x)], [torch.from_numpy(u)])
    assert batch.obs_mask is not None
    log_lik = elbo_terms(m.model, m.guide, batch)["log_lik"]
    assert log_lik.sum().item() == pytest.approx(exact, rel=1e-9)
    assert abs(log_lik[0, 3].item()) < 1e-12  # the step with nothing observed


def test_lgssm_imputation_is_the_exact_conditional_mean_of_the_missing_entries(system):
    p, x, u = system
    mean, cov = joint_gaussian(p, u, len(x))
    flat = x.reshape(-1)
    o = ~np.isnan(flat)
    gain = cov[np.ix_(~o, o)] @ np.linalg.inv(cov[np.ix_(o, o)])
    cond_mean = mean[~o] + gain @ (flat[o] - mean[o])
    cond_sd = np.sqrt(np.diag(cov[np.ix_(~o, ~o)] - gain @ cov[np.ix_(o, ~o)]))
    m = lgssm_with(p)
    out = m.impute(collate([torch.from_numpy(x)], [torch.from_numpy(u)]))
    np.testing.assert_allclose(out["mean"][0].numpy().reshape(-1)[~o], cond_mean, rtol=1e-8)
    np.testing.assert_allclose(out["x"][0].numpy().reshape(-1)[~o], cond_mean, rtol=1e-8)
    np.testing.assert_array_equal(out["x"][0].numpy().reshape(-1)[o], flat[o])
    half_band = (out["hi"] - out["mean"])[0].numpy().reshape(-1)[~o]
    np.testing.assert_allclose(half_band, 1.6448536269514722 * cond_sd, rtol=1e-8)


@pytest.mark.parametrize("family", FAMILIES)
def test_impute_keeps_observed_entries_and_bands_the_missing_ones(family):
    m = build_model(ModelConfig(family, x_dim=2, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8, missing=True))
    x = torch.randn(5, 2)
    x[2, 0] = float("nan")
    out = m.impute(collate([x, torch.randn(3, 2)]), num_samples=50)
    obs = ~torch.isnan(x)
    assert torch.equal(out["x"][0][obs], x[obs])
    assert (out["lo"] <= out["mean"]).all() and (out["mean"] <= out["hi"]).all()
    assert out["hi"][0, 2, 0] > out["lo"][0, 2, 0]
