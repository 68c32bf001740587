"""KVAE (Fraccaro et al. 2017): its Kalman part against the project's exact filter (one system) and Pyro's
GaussianHMM (a mixture, time-varying), its smoother against the LGSSM's, the objective against a hand
computation, the program forms, padding, and the consumers of the state-space contract."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from dvae.data import collate
from dvae.data.batch import SequenceBatch
from dvae.eval.exact import kalman_log_likelihood
from dvae.infer import DynamicalELBO, elbo_terms
from dvae.infer.elbo import iw_bound
from dvae.models import ModelConfig, build_model
from tests.conftest import make_batch
from tests.models.contract_checks import (check_generate_is_the_contract_by_hand,
                                          check_one_particle_filter_is_the_prior_path_by_hand,
                                          check_predict_and_world_model_run, tiny, tiny_batch)


def kvae(u_dim=2, K=3, s_dim=3, **kw):
    torch.manual_seed(0)
    m = build_model(ModelConfig("kvae", x_dim=3, u_dim=u_dim, z_dim=2, rnn_dim=5, transition_dim=6, emission_dim=6,
                                kvae_components=K, kvae_state_dim=s_dim, **kw))
    return m.double()


def f64(batch):
    """The batch's x and u in float64 (the mask and lengths as they are)."""
    return batch._replace(x=batch.x.double(), u=None if batch.u is None else batch.u.double())


def one_system(m, seed=3):
    """Random stable matrices for every one of the model's K systems: (A, B, C, Q, R, m0, P0), float64 numpy."""
    rng = np.random.default_rng(seed)
    s, a, u = m.s_dim, m.config.z_dim, m.config.u_dim
    A = 0.9 * np.linalg.qr(rng.standard_normal((s, s)))[0]
    spd = lambda n: (lambda W: W @ W.T + 0.3 * np.eye(n))(0.5 * rng.standard_normal((n, n)))  # noqa: E731
    return (A, rng.standard_normal((s, u)), rng.standard_normal((a, s)), spd(s), spd(a),
            rng.standard_normal(s), spd(s))


def test_one_system_is_the_exact_kalman_filter():
    """K = 1 (fixed matrices): log p(a | u) of the vectorized path and of the contract stepped by hand equal
    the project's oracle (dvae.eval.exact.kalman_log_likelihood) on each sequence's real steps, to 1e-6."""
    m = kvae(K=1)
    params = one_system(m)
    m.set_system(*params)
    batch = f64(make_batch(lengths=(6, 4, 1), x_dim=3, u_dim=2))
    a = torch.randn(3, 6, 2, dtype=torch.float64)
    path, _ = m.path_log_prob(batch, a)  # (B, T)
    with torch.no_grad():
        state, p = m.initial_state(3)
        steps = []
        for t in range(6):
            if t:
                state, p = m.transition_step(state, batch.x[:, t - 1], batch.u[:, t - 1])
            steps.append(p.log_prob(a[:, t]))
            state = m.with_latent(state, a[:, t])
    contract = torch.where(batch.mask, torch.stack(steps, 1), 0.0)
    for i, L in enumerate(batch.lengths.tolist()):
        exact = kalman_log_likelihood(params, a[i, :L].numpy(), batch.u[i, :L - 1].numpy())
        assert path[i].sum().item() == pytest.approx(exact, abs=1e-6, rel=0)
        assert contract[i].sum().item() == pytest.approx(exact, abs=1e-6, rel=0)
    assert (path[~batch.mask] == 0).all()


def test_the_mixture_is_gaussian_hmm_with_time_varying_matrices():
    """K = 3: given the path, (A_t, B_t, C_t) vary with t; log p(a | u) equals Pyro's GaussianHMM built from
    those matrices (batch shape over time; the controls and m0 as the process noise's mean)."""
    m = kvae(K=3)
    with torch.no_grad():
        m.A.add_(0.2 * torch.randn_like(m.A)), m.C.add_(0.5 * torch.randn_like(m.C))
        m.weights.weight.mul_(20.0)  # far from uniform weights
    batch = f64(make_batch(lengths=(5, 5), x_dim=3, u_dim=2))
    a = torch.randn(2, 5, 2, dtype=torch.float64)
    got = m.path_log_prob(batch, a)[0].sum(1)
    with torch.no_grad():
        h = [m.weights_rnn.h_0.expand(2, -1)]
        for t in range(1, 5):  # h_t = f(h_{t-1}, a_{t-1}), by hand
            h.append(m.weights_rnn.cell(a[:, t - 1], h[-1]))
        alpha = torch.softmax(m.weights(torch.stack(h, 1)), -1)  # (B, T, K)
        assert (alpha.max(-1).values < 0.5).any() and (alpha - alpha[:, :1]).abs().max() > 0.5  # mixed, varying in time
        A, Bm, C = (torch.einsum("btk,kij->btij", alpha, M) for M in (m.A, m.B, m.C))
        Q, R, m0, P0 = m.noise()
        s = m.s_dim
        M = torch.cat([torch.zeros(2, 1, s, s, dtype=A.dtype), A[:, 1:].transpose(-1, -2)], 1)  # (B, T, s, s)
        drive = torch.cat([m0.expand(2, 1, s), (Bm[:, 1:] @ batch.u[:, :-1, :, None])[..., 0]], 1)  # (B, T, s)
        tril = torch.cat([torch.linalg.cholesky(P0)[None], torch.linalg.cholesky(Q).expand(4, s, s)], 0)
        hmm = dist.GaussianHMM(dist.MultivariateNormal(torch.zeros(s, dtype=A.dtype), torch.eye(s, dtype=A.dtype)),
                               M, dist.MultivariateNormal(drive, scale_tril=tril), C.transpose(-1, -2),
                               dist.MultivariateNormal(torch.zeros(2, dtype=A.dtype), R))
        want = hmm.log_prob(a)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_the_smoother_is_the_lgssm_smoother_for_one_system():
    """K = 1: the posterior of s given a draw of a (``encode``) is the LGSSM's Rauch-Tung-Striebel smoother
    on the same matrices with the codes as its observations."""
    m = kvae(K=1)
    params = one_system(m)
    m.set_system(*params)
    lg = build_model(ModelConfig("lgssm", x_dim=2, u_dim=2, z_dim=m.s_dim)).double().set_params(*params)
    batch = f64(make_batch(lengths=(5, 3), x_dim=3, u_dim=2))
    pyro.set_rng_seed(0)
    enc = m.encode(batch, num_samples=2)
    assert enc["z"].shape == (2, 2, 5, 2) and enc["state_cov"].shape == (2, 2, 5, m.s_dim, m.s_dim)
    for k in range(2):
        loc, cov = lg.smooth(collate([enc["z"][k, i, :L] for i, L in enumerate((5, 3))],
                                     [batch.u[i, :L] for i, L in enumerate((5, 3))]))
        for i, L in enumerate((5, 3)):
            torch.testing.assert_close(enc["state_loc"][k, i, :L], loc[i, :L], rtol=1e-8, atol=1e-8)
            torch.testing.assert_close(enc["state_cov"][k, i, :L], cov[i, :L], rtol=1e-8, atol=1e-8)


def logpdf(x, m, s):
    return (-0.5 * ((x - m) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)


@pytest.mark.parametrize("vectorized", [False, True])
def test_the_objective_equals_a_hand_computation(vectorized):
    """T = 2: E_q[log p(x | a) - log q(a | x) + log p(a | u)] at the guide's draw, every factor written out
    (the Kalman filter by its textbook formulas, the weights' RNN by its cell), per step."""
    m = kvae(u_dim=1, K=2, s_dim=3)
    batch = f64(make_batch(lengths=(2, 2), x_dim=3, u_dim=1))
    x, u = batch.x, batch.u
    pyro.set_rng_seed(5)
    terms = elbo_terms(*m.programs(vectorized), batch)
    pyro.set_rng_seed(5)
    loss = DynamicalELBO().differentiable_loss(*m.programs(vectorized), batch)
    pyro.set_rng_seed(5)
    eps = [torch.empty(2, 2, dtype=torch.float64).normal_() for _ in range(2)]
    with torch.no_grad():
        Q, R, m0, P0 = m.noise()
        mean, P, h = m0.expand(2, -1), P0.expand(2, -1, -1), m.weights_rnn.h_0.expand(2, -1)
        log_lik, kl = [], []
        for t in range(2):
            loc_q, scale_q = m.encoder(x[:, t])  # q(a_t | x_t)
            a = loc_q + eps[t] * scale_q
            if t:
                h = m.weights_rnn.cell(a_prev, h)
            w = torch.softmax(m.weights(h), -1)  # (B, K)
            A, Bm, C = (torch.einsum("bk,kij->bij", w, M) for M in (m.A, m.B, m.C))
            if t:
                mean = (A @ mean[..., None])[..., 0] + (Bm @ u[:, t - 1, :, None])[..., 0]
                P = A @ P @ A.transpose(-1, -2) + Q
            S = C @ P @ C.transpose(-1, -2) + R
            log_p = dist.MultivariateNormal((C @ mean[..., None])[..., 0], covariance_matrix=S).log_prob(a)
            G = P @ C.transpose(-1, -2) @ torch.linalg.inv(S)  # the gain
            mean = mean + (G @ (a - (C @ mean[..., None])[..., 0])[..., None])[..., 0]
            P = P - G @ S @ G.transpose(-1, -2)
            loc_x, scale_x = m.emitter(a)
            log_lik.append(logpdf(x[:, t], loc_x, scale_x))
            kl.append(logpdf(a, loc_q, scale_q) - log_p)
            a_prev = a
    torch.testing.assert_close(terms["log_lik"], torch.stack(log_lik, 1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(terms["kl"], torch.stack(kl, 1), rtol=1e-9, atol=1e-9)
    want = -(torch.stack(log_lik).sum() - torch.stack(kl).sum())
    torch.testing.assert_close(loss.detach(), want, rtol=1e-9, atol=1e-9)


def test_the_program_forms_agree_in_value_and_gradient_with_padding():
    m = kvae()
    batch = f64(make_batch(lengths=(6, 4, 1)))
    out = []
    for vectorized in (False, True):
        m.zero_grad()
        pyro.set_rng_seed(2)
        loss = DynamicalELBO().differentiable_loss(*m.programs(vectorized), batch)
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-10, atol=1e-10)
    for n in out[0][1]:
        torch.testing.assert_close(out[0][1][n], out[1][1][n], rtol=1e-8, atol=1e-10)


def row_log_weight(m, batch, zs):
    """log p(x, a) - log q(a | x) of the first sequence at the given codes zs (list of (z_dim,), its real steps)."""
    B, T = batch.batch_size, batch.num_steps
    data = {f"z_{t}": torch.zeros(B, 2, dtype=torch.float64) for t in range(T)}
    for t, z in enumerate(zs):
        data[f"z_{t}"][0] = z
    g = poutine.trace(poutine.condition(m.guide, data)).get_trace(batch)
    p = poutine.trace(poutine.condition(m.model, data)).get_trace(batch)
    g.compute_log_prob(), p.compute_log_prob()
    lp = sum(p.nodes[n]["log_prob"][0] for n in p.nodes if n.startswith(("x_", "z_")))
    return lp - sum(g.nodes[n]["log_prob"][0] for n in g.nodes if n.startswith("z_"))


def test_padding_leaves_the_real_steps_unchanged():
    short = f64(make_batch(lengths=(3,)))
    long = collate([short.x[0], torch.randn(6, 3, dtype=torch.float64)],
                   [short.u[0], torch.randn(6, 2, dtype=torch.float64)])  # row 0 padded to 6
    m = kvae()
    zs = list(torch.randn(3, 2, dtype=torch.float64))
    torch.testing.assert_close(row_log_weight(m, long, zs), row_log_weight(m, short, zs), rtol=1e-12, atol=1e-12)
    a = torch.randn(2, 6, 2, dtype=torch.float64)
    a[0, :3] = torch.stack(zs)
    torch.testing.assert_close(m.path_log_prob(long, a)[0][0].sum(), m.path_log_prob(short, a[:1, :3])[0][0].sum())


def test_the_iw_bound_is_at_least_the_elbo_and_the_forms_agree():
    m = kvae()
    batch = f64(make_batch(lengths=(5, 3)))
    bounds = []
    for vectorized in (False, True):
        pyro.set_rng_seed(1)
        bounds.append(iw_bound(*m.programs(vectorized), batch, num_samples=64))
    torch.testing.assert_close(bounds[0], bounds[1], rtol=1e-10, atol=1e-10)
    elbo = elbo_terms(m.model, m.guide, batch, num_particles=256)["elbo"]
    assert (bounds[0] > elbo).all()


@pytest.mark.parametrize("u_dim", [0, 1])
def test_generate_is_the_contract_run_by_hand(u_dim):
    check_generate_is_the_contract_by_hand(tiny("kvae", u_dim), u_dim)


def test_the_particle_filter_runs_the_contract():
    check_one_particle_filter_is_the_prior_path_by_hand(tiny("kvae"), tiny_batch())


def test_predict_and_the_world_model_run_through_the_contract():
    check_predict_and_world_model_run(tiny("kvae"))


def test_the_model_never_reads_its_observations():
    m = tiny("kvae")
    state, p = m.initial_state(2)
    state = m.with_latent(state, p.sample())
    u = torch.randn(2, 1, dtype=torch.float64)
    one = m.transition_step(state, torch.zeros(2, 2, dtype=torch.float64), u)
    two = m.transition_step(state, torch.randn(2, 2, dtype=torch.float64), u)
    torch.testing.assert_close(one[0]["mean"], two[0]["mean"], rtol=0, atol=0)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="kvae_components >= 1"):
        build_model(ModelConfig("kvae", kvae_components=0))


def test_latent_diagnostics_have_no_kl_per_dimension():
    """The KL of a step is a one-draw estimate against a full-covariance predictive: no KL per dimension
    (NaN, as for the flow guide); the posterior means q(a_t | x_t) give the active units, the same in
    either form."""
    from dvae.infer.diagnostics import latent_report

    m = kvae()
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(L, 3, generator=g).double().numpy() for L in (6, 4)]
    us = [torch.randn(L, 2, generator=g).double().numpy() for L in (6, 4)]
    reports = []
    for vectorized in (False, True):
        pyro.set_rng_seed(2)
        r = latent_report(m, xs, us, vectorized=vectorized)
        assert len(r["kl_per_dim"]) == 2 and all(math.isnan(v) for v in r["kl_per_dim"])
        reports.append(r)
    want = torch.cat([m.encoder(torch.from_numpy(x))[0] for x in xs]).var(0, correction=0)  # the guide's means
    torch.testing.assert_close(torch.tensor(reports[0]["posterior_mean_var"], dtype=torch.float64), want.detach())
    np.testing.assert_allclose(reports[1]["posterior_mean_var"], reports[0]["posterior_mean_var"], rtol=1e-12)


def test_the_path_sites_keep_their_type_and_give_sampled_kl_columns_per_step():
    """Under the plate the vectorized sites stay a FramePath and a KalmanPath (not ExpandedDistribution),
    and the ELBO's KL columns are the per-step one-draw estimates log q(a_t | x_t) - log p(a_t | a_{<t}, u)."""
    from dvae.infer.elbo import site_kl_steps
    from dvae.models.kvae import FramePath, KalmanPath

    m = kvae()
    batch = f64(make_batch(lengths=(5, 3)))
    guide_trace = poutine.trace(m.guide_vectorized).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(m.model_vectorized, trace=guide_trace)).get_trace(batch)
    q, p = guide_trace.nodes["z"]["fn"], model_trace.nodes["z"]["fn"]
    assert type(q) is FramePath and type(p) is KalmanPath
    columns = site_kl_steps(guide_trace.nodes["z"], model_trace.nodes["z"])
    assert columns.steps and not columns.analytic and columns.kl.shape == (2, 5)
    a = q.path
    want = logpdf(a, q.loc, q.scale) - m.path_log_prob(batch, a)[0]
    torch.testing.assert_close(columns.kl, torch.where(batch.mask, want, 0.0).detach())


def test_frames_go_through_conv_nets_and_both_forms_agree():
    """On 8 x 8 binary frames: the conv encoder and emitter, generation and the two program forms."""
    torch.manual_seed(0)
    m = build_model(ModelConfig("kvae", x_dim=64, z_dim=2, rnn_dim=5, emission_dim=6, likelihood="bernoulli",
                                frame_shape=[8, 8])).double()
    assert m.frame_encoder is not None and type(m.emitter).__name__ == "ConvEmitter"
    g = torch.Generator().manual_seed(1)
    batch = collate([(torch.rand(L, 64, generator=g) > 0.5).double() for L in (4, 2)])
    losses = []
    for vectorized in (False, True):
        pyro.set_rng_seed(3)
        losses.append(DynamicalELBO().loss(*m.programs(vectorized), batch))
    assert losses[0] == pytest.approx(losses[1], rel=1e-10) and math.isfinite(losses[0])
    assert m.generate(3, num_samples=2)["x"].shape == (2, 3, 64)
    with pytest.raises(ValueError, match="frame_shape"):
        build_model(ModelConfig("kvae", x_dim=60, frame_shape=[8, 8]))


def test_long_padding_under_an_unstable_system_leaves_everything_finite_and_the_real_steps_unchanged():
    """A learned A_t with a spectral radius above 1 (1.5 here; training on Nottingham reached 1.05) over
    hundreds of padded steps: the filter's belief is frozen there, so the loss and its gradient stay
    finite (the predicted covariance used to grow to inf, and its NaN reached the gradient through
    torch.where), and the real steps' log p and smoothed marginals are those of the unpadded sequence."""
    m = kvae(K=1, u_dim=0)
    A, _, C, Q, R, m0, P0 = one_system(m)
    m.set_system(1.5 * np.eye(m.s_dim), np.zeros((m.s_dim, 0)), C, Q, R, m0, P0)
    torch.manual_seed(4)
    a_short = torch.randn(1, 3, 2, dtype=torch.float64)
    a = torch.cat([a_short, torch.randn(1, 397, 2, dtype=torch.float64)], 1)  # (1, 400, 2)
    a = torch.cat([a, torch.randn(1, 400, 2, dtype=torch.float64)], 0).requires_grad_()  # row 0: 3 real steps
    x = torch.zeros(2, 400, 3, dtype=torch.float64)
    mask = torch.arange(400)[None, :] < torch.tensor([[3], [5]])  # (2, 400): 3 and 5 real steps, then padding
    long = SequenceBatch(x, None, mask, mask.sum(1))
    short = collate([x[0, :3]])
    log_p, (A_t, pred, filt) = m.path_log_prob(long, a)
    log_p.sum().backward()
    assert torch.isfinite(log_p).all() and torch.isfinite(a.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert torch.isfinite(pred[-1][1][0]).all() and pred[-1][1][0].abs().max() < 1e3  # frozen, not 1.5^800
    want, (A_s, pred_s, filt_s) = m.path_log_prob(short, a_short)
    torch.testing.assert_close(log_p[0, :3].detach(), want[0], rtol=1e-12, atol=1e-12)
    from dvae.models.kvae import kalman_smooth
    loc, cov = kalman_smooth(A_t.detach(), pred, filt, long.mask)
    loc_s, cov_s = kalman_smooth(A_s, pred_s, filt_s)
    torch.testing.assert_close(loc[0, :3].detach(), loc_s[0].detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cov[0, :3].detach(), cov_s[0].detach(), rtol=1e-10, atol=1e-10)


def test_scoring_without_moments_mixes_step_by_step_and_gives_the_same_value_and_gradient():
    """``moments=False`` (what the ELBO's ``KalmanPath`` calls): the matrices mixed step by step and no
    moment kept, so that an evaluation's memory does not grow as (B, T, s, s); the same log p and the
    same gradients as the path with its moments, controls and padding included."""
    m = kvae(u_dim=2)
    batch = f64(make_batch(lengths=(5, 3), x_dim=3, u_dim=2))
    torch.manual_seed(2)
    a = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    results = []
    for moments in (True, False):
        m.zero_grad()
        a.grad = None
        log_p, rest = m.path_log_prob(batch, a, moments=moments)
        assert (rest is None) == (not moments)
        log_p.sum().backward()
        results.append((log_p.detach(), a.grad.clone(), [p.grad.clone() for p in m.parameters() if p.grad is not None]))
    (lp1, ga1, gp1), (lp2, ga2, gp2) = results
    torch.testing.assert_close(lp2, lp1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ga2, ga1, rtol=1e-10, atol=1e-12)
    assert len(gp1) == len(gp2) > 0
    for g1, g2 in zip(gp1, gp2):
        torch.testing.assert_close(g2, g1, rtol=1e-10, atol=1e-12)
