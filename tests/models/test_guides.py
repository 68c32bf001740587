"""The DMM's left-to-right (filtering) and normalizing-flow (iaf) guides.

The ltr guide's step t may read x_{0:t} and u_{0:t-1} only: changing anything later must leave its
first t + 1 steps as they were. The iaf guide's log q is held against the base Gaussian's density minus
the flow's log-determinant computed by hand through Pyro's AffineAutoregressive, and, with the flow's
network zeroed (the identity map), against the DKS guide of the same weights.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import TransformedDistribution
from pyro.poutine.util import site_is_subsample
from torch.distributions import Normal

from dvae.data import collate
from dvae.infer import DynamicalELBO, elbo_terms, iw_bound
from dvae.infer.diagnostics import latent_report
from dvae.infer.elbo import site_kl_steps
from dvae.models import ModelConfig, build_model
from dvae.models.paths import FlowPath, FlowStep
from tests.conftest import make_batch

TIGHT = dict(rtol=1e-9, atol=1e-9)


def tiny(guide="dks", u_dim=2, seed=0, **kw):
    torch.manual_seed(seed)
    m = build_model(ModelConfig("dmm", x_dim=3, u_dim=u_dim, z_dim=4, rnn_dim=8, transition_dim=8, emission_dim=8,
                                guide=guide, **kw))
    return m.double()


def batch64(lengths=(7, 5, 3), u_dim=2):
    b = make_batch(lengths=lengths, u_dim=u_dim)
    return b._replace(x=b.x.double(), u=None if b.u is None else b.u.double())


def _guide_locs(m, batch, seed=1):
    """loc of q(z_t | .) at every step (B, T, z_dim) on a seeded draw, from the per-step guide's trace."""
    pyro.set_rng_seed(seed)
    tr = poutine.trace(m.guide).get_trace(batch)
    return torch.stack([tr.nodes[f"z_{t}"]["fn"].base_dist.base_dist.loc for t in range(batch.num_steps)], 1)


def test_the_ltr_guide_reads_no_observation_after_t_and_no_control_after_t_minus_1():
    m = tiny("ltr")
    batch = batch64(lengths=(6, 6))
    ref = _guide_locs(m, batch)
    for t in range(5):
        x, u = batch.x.clone(), batch.u.clone()
        x[:, t + 1:] += 3.0  # later observations
        u[:, t:] -= 2.0  # u_t and later: they drive z_{t+1} onwards
        got = _guide_locs(m, batch._replace(x=x, u=u))
        torch.testing.assert_close(got[:, :t + 1], ref[:, :t + 1], **TIGHT)
        assert not torch.allclose(got[:, t + 1], ref[:, t + 1])  # step t + 1 sees x_{t+1} and u_t
    u = batch.u.clone()
    u[:, 2] += 1.0  # u_2 enters step 3 (through p(z_3 | z_2, u_2)), not step 2
    got = _guide_locs(m, batch._replace(u=u))
    torch.testing.assert_close(got[:, :3], ref[:, :3], **TIGHT)
    assert not torch.allclose(got[:, 3], ref[:, 3])


def test_the_dks_guide_does_read_the_future():
    """The contrast: the backward-RNN guide's step 0 changes with the last observation."""
    m = tiny("dks")
    batch = batch64(lengths=(6, 6))
    x = batch.x.clone()
    x[:, -1] += 3.0
    assert not torch.allclose(_guide_locs(m, batch._replace(x=x))[:, 0], _guide_locs(m, batch)[:, 0])


def test_bad_guide_options_are_refused():
    with pytest.raises(ValueError, match="bidirectional"):
        tiny("ltr", bidirectional=True)
    with pytest.raises(ValueError, match="num_iafs"):
        tiny("dks", num_iafs=2)
    with pytest.raises(ValueError, match="unknown DMM guide"):
        tiny("flow")


def _hand_flow(iafs, x):
    """z = f(x) and log |det df/dx| through each AffineAutoregressive by hand: y = mean + exp(s) x,
    (mean, s) = arn(x), s clipped to [-5, 3] as Pyro does, log det = sum s."""
    y, log_det = x, torch.zeros(x.shape[:-1], dtype=x.dtype)
    for t in iafs:
        mean, log_scale = t.arn(y)
        log_scale = log_scale.clamp(t.log_scale_min_clip, t.log_scale_max_clip)
        y = mean + torch.exp(log_scale) * y
        log_det = log_det + log_scale.sum(-1)
    return y, log_det


@pytest.mark.parametrize("num_iafs", [1, 2])
def test_the_iaf_guide_scores_the_base_density_minus_the_flows_log_det(num_iafs):
    m = tiny("iaf", num_iafs=num_iafs)
    assert len(m.iafs) == num_iafs
    batch = batch64()
    pyro.set_rng_seed(2)
    tr = poutine.trace(m.guide).get_trace(batch)
    tr.compute_log_prob()
    z_prev = m.z_q_0.expand(3, -1)
    h = m.encoder(m._encoder_input(batch), batch.lengths)
    for t in range(batch.num_steps):
        site = tr.nodes[f"z_{t}"]
        step = site["fn"].base_dist
        assert isinstance(step, FlowStep) and step.event_shape == (4,) and step.batch_shape == (3,)
        loc, scale = m.combiner(z_prev, h[:, t])  # the base Gaussian from the previous draw
        torch.testing.assert_close(step.loc, loc, **TIGHT)
        z, log_det = _hand_flow(m.iafs, step.base)
        torch.testing.assert_close(site["value"], z, **TIGHT)
        log_q = Normal(loc, scale).log_prob(step.base).sum(-1) - log_det  # (B,)
        log_q = torch.where(batch.mask[:, t], log_q, torch.zeros_like(log_q))
        torch.testing.assert_close(site["log_prob"], log_q, **TIGHT)
        # at another value (not the held draw) log_prob inverts the flow: the same number at z (Pyro's
        # AffineAutoregressive inverts from zeros of the default dtype)
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            inverted = step.log_prob(z.clone())
            ref = TransformedDistribution(dist.Normal(loc, scale).to_event(1), list(m.iafs)).log_prob(z.clone())
        finally:
            torch.set_default_dtype(default)
        torch.testing.assert_close(inverted, ref, **TIGHT)
        torch.testing.assert_close(inverted[batch.mask[:, t]], log_q[batch.mask[:, t]], rtol=1e-6, atol=1e-6)
        z_prev = z


def _identity_flow(m):
    with torch.no_grad():
        for t in m.iafs:
            t.arn.layers[-1].weight.zero_()
            t.arn.layers[-1].bias.zero_()
    return m


@pytest.mark.parametrize("vectorized", [False, True])
def test_the_iaf_guide_with_an_identity_flow_is_the_dks_guide(vectorized):
    dks, iaf = tiny("dks"), _identity_flow(tiny("iaf", num_iafs=2))
    assert all(torch.equal(p, iaf.state_dict()[k]) for k, p in dks.state_dict().items())  # same shared weights
    batch = batch64()
    out = []
    for m in (dks, iaf):
        model, guide = m.programs(vectorized)
        pyro.set_rng_seed(5)
        gt = poutine.trace(guide).get_trace(batch)
        mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace(batch)
        gt.compute_log_prob()
        mt.compute_log_prob()
        log_q = sum(s["log_prob"] for n, s in gt.nodes.items() if s["type"] == "sample" and n.startswith("z"))
        log_p = sum(s["log_prob"] for n, s in mt.nodes.items() if s["type"] == "sample")  # (B,)
        pyro.set_rng_seed(6)
        terms = elbo_terms(model, guide, batch)
        pyro.set_rng_seed(6)
        out.append((gt.nodes["_RETURN"]["value"], log_q, log_p, terms, iw_bound(model, guide, batch, 7)))
    (z_a, q_a, p_a, t_a, iw_a), (z_b, q_b, p_b, t_b, iw_b) = out
    torch.testing.assert_close(z_b, z_a, **TIGHT)
    torch.testing.assert_close(q_b, q_a, **TIGHT)
    torch.testing.assert_close(p_b, p_a, **TIGHT)
    torch.testing.assert_close(iw_b, iw_a, **TIGHT)
    torch.testing.assert_close(t_b["log_lik"], t_a["log_lik"], **TIGHT)
    # the ELBO's KL: the flow guide's one-draw estimate at the path is log q - log p of the latents, the
    # DKS guide's the closed form; their sums over a sequence differ by a zero-mean term
    assert not torch.allclose(t_b["kl"], t_a["kl"])


def test_the_iaf_kl_is_the_one_draw_estimate_in_both_forms():
    m = tiny("iaf")
    batch = batch64()
    for vectorized in (False, True):
        model, guide = m.programs(vectorized)
        pyro.set_rng_seed(3)
        gt = poutine.trace(guide).get_trace(batch)
        mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace(batch)
        names = [n for n, s in mt.nodes.items() if s["type"] == "sample" and not s["is_observed"]
                 and not site_is_subsample(s)]
        cols = [site_kl_steps(gt.nodes[n], mt.nodes[n]) for n in names]
        assert not any(c.analytic for c in cols)
        if vectorized:
            assert isinstance(gt.nodes["z"]["fn"], FlowPath) and cols[0].kl.shape == (3, 7)
        kl = torch.cat([c.kl for c in cols], -1)  # (B, T)
        gt.compute_log_prob()
        mt.compute_log_prob()
        by_hand = sum(gt.nodes[n]["log_prob"] - mt.nodes[n]["log_prob"] for n in names)  # (B,)
        torch.testing.assert_close(kl.sum(-1), by_hand, **TIGHT)
        assert (kl[~batch.mask] == 0).all()


@pytest.mark.parametrize("guide", ["ltr", "iaf"])
def test_padding_leaves_the_real_steps_unchanged(guide):
    m = tiny(guide)
    g = torch.Generator().manual_seed(3)
    x, u = torch.randn(5, 3, generator=g).double(), torch.randn(5, 2, generator=g).double()
    plain = collate([x], [u])
    padded = collate([x, torch.zeros(9, 3).double()], [u, torch.zeros(9, 2).double()])
    padded = padded._replace(x=padded.x[:1].clone(), u=padded.u[:1].clone(), mask=padded.mask[:1],
                             lengths=padded.lengths[:1])
    padded.x[0, 5:] = 100.0
    padded.u[0, 5:] = -50.0
    for vectorized in (False, True):
        terms = []
        for b in (plain, padded):
            pyro.set_rng_seed(7)
            terms.append(elbo_terms(*m.programs(vectorized), b))
        torch.testing.assert_close(terms[1]["log_lik"][:, :5], terms[0]["log_lik"], **TIGHT)
        torch.testing.assert_close(terms[1]["kl"][:, :5], terms[0]["kl"], **TIGHT)
        assert (terms[1]["log_lik"][:, 5:] == 0).all() and (terms[1]["kl"][:, 5:] == 0).all()


@pytest.mark.parametrize("guide", ["ltr", "iaf"])
def test_encode_predict_and_generate_work(guide):
    m = tiny(guide)
    batch = batch64()
    z = m.encode(batch, num_samples=2)["z"]
    assert z.shape == (2, 3, 7, 4) and torch.isfinite(z).all()
    out = m.predict(batch, torch.zeros(3, 4, 2, dtype=torch.float64), horizon=4, num_samples=5)
    assert out["x"].shape == (5, 3, 4, 3) and torch.isfinite(out["x_mean"]).all()
    assert m.generate(6, u=torch.zeros(6, 2, dtype=torch.float64), num_samples=2)["x"].shape == (2, 6, 3)


def test_the_iaf_weights_round_trip_through_a_state_dict():
    """The autoregressive networks' masks and permutations are part of the saved state."""
    a, b = tiny("iaf", num_iafs=2, seed=0), tiny("iaf", num_iafs=2, seed=1)
    b.load_state_dict(a.state_dict())
    batch = batch64()
    values = []
    for m in (a, b):
        pyro.set_rng_seed(4)
        values.append(DynamicalELBO().loss(*m.programs(), batch))
    assert values[0] == values[1] and math.isfinite(values[0])


def test_latent_diagnostics_of_the_iaf_guide():
    m = tiny("iaf")
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(L, 3, generator=g).double().numpy() for L in (6, 4)]
    us = [torch.randn(L, 2, generator=g).double().numpy() for L in (6, 4)]
    reports = []
    for vectorized in (False, True):
        pyro.set_rng_seed(2)
        r = latent_report(m, xs, us, vectorized=vectorized)
        assert len(r["kl_per_dim"]) == 4 and all(math.isnan(v) for v in r["kl_per_dim"])
        assert 0 <= r["active_units"] <= 4 and all(math.isfinite(v) for v in r["posterior_mean_var"])
        reports.append(r)
    # the same centres f(loc_t) along the same drawn paths in either form
    torch.testing.assert_close(torch.tensor(reports[1]["posterior_mean_var"]),
                               torch.tensor(reports[0]["posterior_mean_var"]), **TIGHT)
    assert min(reports[0]["posterior_mean_var"]) > 0
