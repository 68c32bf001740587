"""The estimator registry and its measurement against oracles: equal expectations, the exact draw-by-draw
identity of IW(K=1) and the sampled ELBO, IW monotone in K, TMC against a grid-sum log p(x), and the
measured variance against numpy's on the kept gradients."""

import math

import numpy as np
import pyro
import pytest
import torch

from studies.compare.estimators import grid_log_p
from dvae.data import collate
from dvae.infer import DynamicalELBO
from dvae.infer.estimators import estimator_programs, make_estimator, measure_estimator, tmc_applies
from dvae.models import ModelConfig, build_model
from tests.conftest import make_batch


@pytest.fixture(autouse=True)
def _one_thread():
    """Small per-step programs: one thread (several compete for the cores when the suite runs in parallel)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_dmm(guide="dks", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(model="dmm", x_dim=3, u_dim=2, z_dim=2, rnn_dim=16, transition_dim=16, emission_dim=16, guide=guide)
    cfg.update(kw)
    return build_model(ModelConfig(**cfg))


def test_analytic_and_sampled_elbo_agree_in_expectation_and_the_analytic_kl_has_lower_gradient_variance():
    dmm, batch = small_dmm(), make_batch((7, 5, 3))
    a = measure_estimator(dmm, batch, "analytic", draws=40, seed=1)
    s = measure_estimator(dmm, batch, "sampled", draws=40, seed=2)
    assert abs(a.value_mean - s.value_mean) < 3 * math.hypot(a.value_se, s.value_se)
    assert a.num_steps == s.num_steps == 15
    # the same draws of z, the KL in closed form or by the draw: the closed form removes noise
    s_same = measure_estimator(dmm, batch, "sampled", draws=40, seed=1)
    assert a.grad_var < s_same.grad_var
    assert a.grad_var < s.grad_var


def test_iw_with_one_particle_is_the_sampled_elbo_draw_by_draw():
    dmm, batch = small_dmm(), make_batch((7, 5, 3))
    s = measure_estimator(dmm, batch, "sampled", draws=20, seed=3, keep_grads=True)
    iw = measure_estimator(dmm, batch, "iw", 1, draws=20, seed=3, keep_grads=True)
    np.testing.assert_allclose(iw.values, s.values, rtol=1e-5)
    np.testing.assert_allclose(iw.grads, s.grads, rtol=1e-4, atol=1e-6)


def test_iw_bound_rises_with_the_number_of_particles():
    dmm, batch = small_dmm(), make_batch((7, 5, 3))
    stats = [measure_estimator(dmm, batch, "iw", k, draws=30, seed=4) for k in (1, 4, 16)]
    for lo, hi in zip(stats, stats[1:]):
        assert hi.value_mean - lo.value_mean > 3 * math.hypot(lo.value_se, hi.value_se)
    assert stats[-1].grad_var < stats[0].grad_var


def test_measured_variance_mean_and_gradient_are_numpys_on_the_kept_draws_and_the_hand_gradient():
    dmm, batch = small_dmm(), make_batch((6, 4))
    st = measure_estimator(dmm, batch, "analytic", draws=12, seed=5, keep_grads=True, warmup=0)
    G = st.grads  # (R, P)
    assert G.shape == (12, sum(p.numel() for p in dmm.parameters()))
    assert st.grad_var == pytest.approx(np.var(G, axis=0, ddof=1).sum(), rel=1e-9)
    assert st.grad_norm == pytest.approx(np.linalg.norm(G.mean(0)), rel=1e-9)
    assert st.grad_snr == pytest.approx(st.grad_norm / math.sqrt(st.grad_var), rel=1e-12)
    assert st.value_mean == pytest.approx(st.values.mean())
    assert st.value_se == pytest.approx(st.values.std(ddof=1) / math.sqrt(12))
    # the first draw by hand: the same seed, DynamicalELBO's loss, autograd of -loss / number of real steps
    pyro.clear_param_store()
    pyro.set_rng_seed(5)
    loss = DynamicalELBO().differentiable_loss(dmm.model, dmm.guide, batch)
    grads = torch.autograd.grad(-loss / 10, list(dmm.parameters()), allow_unused=True)
    g0 = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, dmm.parameters())])
    np.testing.assert_allclose(G[0], g0.double().numpy(), rtol=1e-4, atol=1e-7)
    assert st.values[0] == pytest.approx(-float(loss.detach()) / 10, rel=1e-6)
    assert all(p.grad is None for p in dmm.parameters())  # no gradient left behind


def _tiny(guide):
    torch.manual_seed(1)
    # the backward RNN alone (bidirectional=False), the guides these figures were measured with: dks is then
    # q(z_t | z_{t-1}, x_{t:T}), whose TMC is measured above log p(x)
    return build_model(ModelConfig(model="dmm", x_dim=1, u_dim=0, z_dim=1, rnn_dim=8, transition_dim=8,
                                   emission_dim=8, guide=guide, bidirectional=False)).double()


def _mean_bound(model, name, k, batch, repeats, seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    prog_model, prog_guide = estimator_programs(model, name, k)
    elbo = make_estimator(name, k)
    with torch.no_grad():
        means = np.array([-elbo.loss(prog_model, prog_guide, batch) / batch.batch_size for _ in range(repeats)])
    return means.mean(), means.std(ddof=1) / math.sqrt(repeats)


def test_tmc_is_a_bound_above_iw_with_the_mean_field_guide_and_not_a_bound_with_the_structured_one():
    x = torch.tensor([[0.5], [1.0], [0.2]], dtype=torch.float64)
    batch = collate([x] * 200)  # 200 independent draws of the bound on one sequence per call
    mf = _tiny("mean_field")
    log_p = grid_log_p(mf, x)
    iw, iw_se = _mean_bound(mf, "iw", 8, batch, 5, 0)
    tmc, tmc_se = _mean_bound(mf, "tmc", 8, batch, 5, 1)
    assert iw - 3 * iw_se < tmc + 3 * tmc_se  # E[TMC_K] >= E[IW_K] for independent per-step proposals
    assert tmc < log_p + 3 * tmc_se  # a bound on the grid-sum log p(x)
    assert tmc_applies(mf)[0]
    dks = _tiny("dks")
    log_p = grid_log_p(dks, x)
    tmc, tmc_se = _mean_bound(dks, "tmc", 16, batch, 5, 2)
    assert tmc > log_p + 3 * tmc_se  # measured above log p(x): not a bound
    assert not tmc_applies(dks)[0]


def test_grid_log_p_is_the_kalman_likelihood_of_a_linear_gaussian_dmm():
    """The grid-sum oracle itself, on a DMM whose networks are set to a linear-Gaussian system."""
    from dvae.eval.exact import LGSSMParams, kalman_log_likelihood

    m = _tiny("mean_field")
    with torch.no_grad():
        for mod in (m.transition.gate, m.transition.proposed_mean, m.emitter.net):
            for p in mod.parameters():
                p.zero_()
        m.transition.gate[-1].bias.fill_(-1e4)  # gate 0: the mean is the linear map
        m.transition.linear_loc.weight.fill_(0.9)
        m.transition.scale.bias.fill_(math.log(math.expm1(0.5 - 1e-3)))  # scale = softplus(.) + 1e-3 = 0.5
        net = m.emitter.net  # Linear, ReLU, Linear, ReLU, Linear: mean = 1.5 (relu(z) - relu(-z)) = 1.5 z
        net[0].weight[:2, 0] = torch.tensor([1.0, -1.0])
        net[2].weight[0, 0] = net[2].weight[1, 1] = 1.0
        net[4].weight[0, :2] = torch.tensor([1.5, -1.5])
        m.initial.raw_scale.fill_(math.log(math.expm1(1.0 - 1e-3)))
    sx = float(torch.nn.functional.softplus(m.emitter.raw_scale.detach()) + 1e-3)
    x = np.array([[0.5], [1.0], [0.2]])
    params = LGSSMParams(np.array([[0.9]]), np.zeros((1, 1)), np.array([[1.5]]), np.array([[0.25]]),
                         np.array([[sx ** 2]]), np.zeros(1), np.eye(1))
    assert grid_log_p(m, torch.from_numpy(x)) == pytest.approx(kalman_log_likelihood(params, x), abs=1e-6)


def test_bad_estimator_names_and_particle_counts_are_refused():
    with pytest.raises(ValueError, match="unknown estimator"):
        make_estimator("reinforce")
    with pytest.raises(ValueError, match="at least 2"):
        make_estimator("tmc", 1)
    with pytest.raises(ValueError, match="particles"):
        make_estimator("iw", 0)
    with pytest.raises(ValueError, match="draws"):
        measure_estimator(small_dmm(), make_batch((3,)), "analytic", draws=1)


FAMILIES = ("dmm", "vrnn", "vrae", "lgssm", "vae", "storn", "srnn", "rssm", "dsae", "kvae")
NOT_BROADCASTING = ("vrnn", "vrae", "vae", "storn", "srnn", "rssm", "dsae", "kvae")


def _family(name):
    torch.manual_seed(3)
    return build_model(ModelConfig(model=name, x_dim=2, u_dim=1, z_dim=2, rnn_dim=4, transition_dim=4,
                                   emission_dim=4)).double()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name, k", [("analytic", 1), ("analytic", 2), ("sampled", 1), ("sampled", 3),
                                     ("iw", 1), ("iw", 3), ("tmc", 2)])
def test_every_family_and_estimator_runs_or_is_refused_in_one_clear_error(family, name, k):
    """The table of families x estimators: a finite value and finite gradients, or (TMC on the families
    whose programs do not broadcast over samples: the VRNN, the VRAE, the static VAE) a ValueError saying
    so; never a raw error."""
    model = _family(family)
    g = np.random.default_rng(0)
    batch = collate([torch.from_numpy(g.standard_normal((L, 2))) for L in (4, 2)],
                    [torch.from_numpy(g.standard_normal((L, 1))) for L in (4, 2)])
    if name == "tmc" and family in NOT_BROADCASTING:
        with pytest.raises(ValueError, match=f"tmc estimator is not defined for the {family}"):
            measure_estimator(model, batch, name, k, draws=2, warmup=0)
        return
    st = measure_estimator(model, batch, name, k, draws=2, warmup=0)
    assert math.isfinite(st.value_mean) and math.isfinite(st.grad_var) and st.grad_norm > 0


@pytest.mark.parametrize("family", NOT_BROADCASTING)
def test_iw_particles_drawn_one_after_another_are_the_log_mean_of_the_importance_weights(family):
    """The non-broadcasting families' K particles are drawn in turn: the bound equals sum_b log (1/K) sum_k w_kb of
    the K traces drawn in the same order from the same seed (w_kb = log p(x_b, z_kb) - log q(z_kb | x_b),
    sequence b's importance weight)."""
    from pyro import poutine

    model = _family(family)
    g = np.random.default_rng(1)
    batch = collate([torch.from_numpy(g.standard_normal((L, 2))) for L in (5, 3)],
                    [torch.from_numpy(g.standard_normal((L, 1))) for L in (5, 3)])
    K = 3
    pyro.clear_param_store()
    prog_model, prog_guide = estimator_programs(model, "iw", K)
    pyro.set_rng_seed(7)
    with torch.no_grad():
        bound = -make_estimator("iw", K, model).loss(prog_model, prog_guide, batch)
    pyro.set_rng_seed(7)
    weights = []
    with torch.no_grad():
        for _ in range(K):
            q = poutine.trace(prog_guide).get_trace(batch)
            p = poutine.trace(poutine.replay(prog_model, trace=q)).get_trace(batch)
            w = torch.zeros(batch.batch_size, dtype=torch.float64)  # (B,): the sequences are independent
            for trace, sign in ((p, 1.0), (q, -1.0)):
                trace.compute_log_prob()
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        w = w + sign * site["log_prob"]
            weights.append(w)
    expected = (torch.logsumexp(torch.stack(weights), 0) - math.log(K)).sum()  # log-mean-exp per sequence
    assert bound == pytest.approx(float(expected), rel=1e-9)
