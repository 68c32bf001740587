"""The linear-Gaussian baseline: its Pyro program's score is the exact Kalman log-likelihood, its
smoother is the exact posterior mean, and fitting it by SVI is maximum likelihood."""


import math

import numpy as np
import pyro
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dvae.data import collate
from dvae.eval.exact import LGSSMParams, kalman_log_likelihood, sample_lgssm
from dvae.infer import elbo_terms, iw_bound
from dvae.infer.elbo import DynamicalELBO
from dvae.infer.evaluation import evaluate
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model


def _model(z_dim=2, x_dim=3, u_dim=1, seed=0):
    torch.manual_seed(seed)
    m = build_model(ModelConfig("lgssm", x_dim=x_dim, u_dim=u_dim, z_dim=z_dim))
    with torch.no_grad():  # move away from the initial values so every parameter matters
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


def _numpy_params(m):
    return LGSSMParams(*(t.detach().double().numpy() for t in m.params()))


def test_lgssm_score_is_the_exact_kalman_log_likelihood_with_padding():
    m = _model()
    g = torch.Generator().manual_seed(1)
    lengths = (6, 3, 1)
    xs = [torch.randn(L, 3, generator=g) for L in lengths]
    us = [torch.randn(L, 1, generator=g) for L in lengths]
    terms = elbo_terms(m.model, m.guide, collate(xs, us))
    p = _numpy_params(m)
    for i in range(3):
        exact = kalman_log_likelihood(p, xs[i].double().numpy(), us[i].double().numpy())
        assert terms["elbo"][i].item() == pytest.approx(exact, rel=1e-4, abs=1e-4)
    assert (terms["kl"] == 0).all()
    # with no latent sites, the importance-weighted bound is the same exact value
    torch.testing.assert_close(iw_bound(m.model, m.guide, collate(xs, us), 3), terms["elbo"], rtol=1e-5, atol=1e-5)


def test_lgssm_smoother_equals_the_brute_force_posterior_mean():
    m = _model(z_dim=2, x_dim=1, u_dim=1)
    p = _numpy_params(m)
    g = np.random.default_rng(3)
    L = 4
    x, u = g.standard_normal((L, 1)), g.standard_normal((L, 1))
    # joint Gaussian of (z_0..z_{L-1}, x_0..x_{L-1}) by unrolling
    Mz = [p.m0]
    for t in range(1, L):
        Mz.append(p.A @ Mz[-1] + p.B @ u[t - 1])
    cov = {(0, 0): p.P0}
    for t in range(1, L):
        cov[(t, t)] = p.A @ cov[(t - 1, t - 1)] @ p.A.T + p.Q
    for s in range(L):
        for t in range(s + 1, L):
            cov[(t, s)] = p.A @ cov[(t - 1, s)]
            cov[(s, t)] = cov[(t, s)].T
    Szz = np.block([[cov[(s, t)] for t in range(L)] for s in range(L)])
    Cb = np.kron(np.eye(L), p.C)
    Sxx = Cb @ Szz @ Cb.T + np.kron(np.eye(L), p.R)
    mz = np.concatenate(Mz)
    post = mz + Szz @ Cb.T @ np.linalg.solve(Sxx, x.ravel() - Cb @ mz)
    loc, _ = m.smooth(collate([torch.tensor(x, dtype=torch.float32)], [torch.tensor(u, dtype=torch.float32)]))
    np.testing.assert_allclose(loc[0].numpy().ravel(), post, rtol=1e-3, atol=1e-4)


def test_fitting_lgssm_by_svi_reaches_the_true_likelihood():
    true = LGSSMParams(np.array([[0.9]]), np.array([[0.5]]), np.array([[1.0]]), np.array([[0.09]]),
                       np.array([[0.25]]), np.zeros(1), np.eye(1))
    rng = np.random.default_rng(0)
    xs, us, _ = sample_lgssm(true, 200, 25, rng)
    xs, us = list(xs.astype(np.float32)), list(us.astype(np.float32))
    exact_nll = -np.mean([kalman_log_likelihood(true, xs[i], us[i]) for i in range(160, 200)]) / 25
    pyro.set_rng_seed(0)
    m = build_model(ModelConfig("lgssm", x_dim=1, u_dim=1, z_dim=1))
    Trainer(m, TrainConfig(epochs=60, batch_size=40, lr=2e-2, patience=0), (xs[:160], us[:160]),
            (xs[160:], us[160:])).fit(progress=False)
    fitted = evaluate(m, xs[160:], us[160:])["neg_elbo_per_step"]
    assert abs(fitted - exact_nll) < 0.03, (fitted, exact_nll)


def test_lgssm_predict_and_generate_shapes():
    m = _model()
    batch = collate([torch.randn(5, 3), torch.randn(3, 3)], [torch.randn(5, 1), torch.randn(3, 1)])
    p = m.predict(batch, torch.randn(2, 4, 1), 4, num_samples=6)
    assert p["x"].shape == (6, 2, 4, 3) and p["z"].shape == (6, 2, 4, 2)
    g = m.generate(7, u=torch.zeros(7, 1), num_samples=3)
    assert g["x"].shape == (3, 7, 3)
    assert m.encode(batch, 5)["z"].shape == (5, 2, 5, 2)


# --- the GaussianHMM program against the step-by-step filter; no per-step host reads ------------------
def _random_batch(x_dim, u_dim, lengths, g, missing=0.0, dtype=torch.float64):
    xs = [torch.randn(L, x_dim, generator=g, dtype=dtype) for L in lengths]
    for x in xs:
        x[torch.rand(x.shape, generator=g) < missing] = float("nan")  # missing entries
    us = [torch.randn(L, u_dim, generator=g, dtype=dtype) for L in lengths] if u_dim else None
    return collate(xs, us)


def _observed_log_prob(program, batch):
    trace = pyro.poutine.trace(program).get_trace(batch)
    trace.compute_log_prob()
    return sum(s["log_prob"] for s in trace.nodes.values() if s["type"] == "sample" and s["is_observed"])  # (B,)


@pytest.mark.parametrize("z_dim, x_dim, u_dim, missing", [(1, 1, 1, 0.0), (3, 2, 2, 0.0), (4, 3, 0, 0.0),
                                                          (3, 2, 1, 0.3), (2, 4, 0, 0.4)])
def test_gaussian_hmm_program_equals_the_step_by_step_filter_in_float64(z_dim, x_dim, u_dim, missing):
    """The vectorized program (one GaussianHMM site) scores exactly what the per-step program (today's filter,
    step by step) scores, with padding (lengths 7, 3, 1) and missing entries, and the gradients agree."""
    m = _model(z_dim, x_dim, u_dim, seed=z_dim + x_dim).double()
    batch = _random_batch(x_dim, u_dim, (7, 3, 1, 7), torch.Generator().manual_seed(x_dim), missing)
    if missing:
        assert batch.obs_mask is not None and not batch.obs_mask[batch.mask].all()
    grads = []
    for program in (m.model, m.model_vectorized):
        m.zero_grad()
        lp = _observed_log_prob(program, batch)
        lp.sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
        if program == m.model:
            per_step = lp.detach()
    assert lp.shape == (4,)
    assert (lp.detach() - per_step).abs().max() < 1e-10
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-9, atol=1e-9)
    if not missing:  # and both are the numpy oracle's
        p = _numpy_params(m)
        for i, L in enumerate(batch.lengths.tolist()):
            u = None if batch.u is None else batch.u[i, :L].numpy()
            assert lp[i].item() == pytest.approx(kalman_log_likelihood(p, batch.x[i, :L].numpy(), u), abs=1e-10)


def test_gaussian_hmm_program_per_step_terms_and_iw_bound():
    """``elbo_terms`` of the vectorized program gives the per-step terms log p(x_t | x_<t, u) of the per-step
    program (from the same filter), summing to the GaussianHMM score; the IW bound is that score."""
    m = _model(3, 2, 1).double()
    batch = _random_batch(2, 1, (6, 2, 4), torch.Generator().manual_seed(5), missing=0.2)
    per_step = elbo_terms(m.model, m.guide, batch)
    vec = elbo_terms(*m.programs(vectorized=True), batch)
    torch.testing.assert_close(vec["log_lik"], per_step["log_lik"], rtol=0, atol=1e-12)
    assert (vec["log_lik"][~batch.mask] == 0).all()
    score = _observed_log_prob(m.model_vectorized, batch)
    torch.testing.assert_close(vec["elbo"], score, rtol=0, atol=1e-10)
    torch.testing.assert_close(iw_bound(*m.programs(vectorized=True), batch, 2), score, rtol=0, atol=1e-10)


def test_the_vectorized_program_s_terms_run_one_filter_not_two(monkeypatch):
    """``elbo_terms`` (what ``evaluate(vectorized=True)`` reads) of the vectorized program takes its
    per-step terms from the step-by-step filter and does not also score the path by GaussianHMM."""
    from dvae.models.lgssm import KalmanMarginal

    m = _model(2, 2, 1).double()
    batch = _random_batch(2, 1, (5, 3), torch.Generator().manual_seed(1))
    hmm_scores, filters = [], []
    score, forward = KalmanMarginal.log_prob, type(m)._forward
    monkeypatch.setattr(KalmanMarginal, "log_prob", lambda self, v: hmm_scores.append(1) or score(self, v))
    monkeypatch.setattr(type(m), "_forward", lambda self, *a, **k: filters.append(1) or forward(self, *a, **k))
    terms = elbo_terms(*m.programs(vectorized=True), batch)
    assert (len(hmm_scores), len(filters)) == (0, 1)
    torch.testing.assert_close(terms["elbo"], _observed_log_prob(m.model_vectorized, batch), rtol=0, atol=1e-10)


def test_lgssm_trains_on_the_gaussian_hmm_program_by_default():
    """Evaluation of either program of a fitted model gives the same bound (float32)."""
    g = np.random.default_rng(1)
    xs = [g.standard_normal((L, 2)).astype(np.float32) for L in (9, 5, 7, 9)]
    us = [g.standard_normal((len(x), 1)).astype(np.float32) for x in xs]
    pyro.set_rng_seed(0)
    m = build_model(ModelConfig("lgssm", x_dim=2, u_dim=1, z_dim=2))
    Trainer(m, TrainConfig(epochs=2, batch_size=2, patience=0), (xs, us), (xs, us)).fit(progress=False)
    a, b = evaluate(m, xs, us, vectorized=False), evaluate(m, xs, us, vectorized=True)
    assert a["neg_elbo_per_step"] == pytest.approx(b["neg_elbo_per_step"], abs=1e-5)


class _HostReads(TorchDispatchMode):
    """Counts the operators that read a result back to the host on a GPU: ``_local_scalar_dense`` (an
    ``.item()``, ``bool()``) and ``_linalg_check_errors`` (the success check of ``torch.linalg.cholesky``,
    ``solve``, ``inv``), which on CPU read in place and so are counted here by name."""

    def __init__(self):
        super().__init__()
        self.count = {"_local_scalar_dense": 0, "_linalg_check_errors": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.count:
            self.count[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("vectorized", [False, True])
def test_lgssm_update_reads_nothing_back_per_step(vectorized):
    """One update (loss and gradients, argument validation off) makes no host read per time step: the
    step-by-step filter none at all (``cholesky_ex``, no ``linalg.solve``), the GaussianHMM program only
    Pyro's checked Cholesky per level of its parallel scan (ceil(log2 T) + 2). Today's filter made 2 per step."""
    m = _model(2, 3, 1)
    counts = {}
    for T in (8, 64):
        batch = _random_batch(3, 1, (T, T - 3), torch.Generator().manual_seed(T), missing=0.1, dtype=torch.float32)
        with pyro.validation_enabled(False), _HostReads() as reads:
            DynamicalELBO().loss_and_grads(*m.programs(vectorized=vectorized), batch)
        counts[T] = reads.count
    for T, c in counts.items():
        assert c["_local_scalar_dense"] == 0, (T, c)
        assert c["_linalg_check_errors"] == ((math.ceil(math.log2(T)) + 2) if vectorized else 0), (T, c)


def test_set_params_makes_its_matrices_on_the_parameters_device():
    """``set_params`` builds its identity on the parameters' device and dtype (it was made on the CPU, which
    fails against parameters and matrices elsewhere: here the ``meta`` device stands in for a GPU)."""
    m = _model().to("meta")
    on = dict(device="meta")
    m.set_params(0.9 * torch.eye(2, **on), torch.ones(2, 1, **on), torch.ones(3, 2, **on), torch.eye(2, **on),
                 torch.eye(3, **on), torch.zeros(2, **on), torch.eye(2, **on))
    assert all(p.device.type == "meta" for p in m.parameters())
    # and on the CPU, in float64, it round-trips a known system through the parameterisation
    true = LGSSMParams(np.array([[0.8, 0.1], [0.0, 0.7]]), np.ones((2, 1)), np.arange(6.0).reshape(3, 2),
                       np.array([[0.3, 0.1], [0.1, 0.2]]), np.diag([0.5, 0.4, 0.6]), np.array([1.0, -1.0]),
                       np.eye(2))
    got = _numpy_params(_model().double().set_params(*true))
    for a, b in zip(got, true):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_both_programs_and_the_smoother_make_every_tensor_on_the_parameters_device():
    """The ``meta`` device stands in for a GPU: a tensor made on the CPU next to the parameters would fail."""
    m = _model().to("meta")
    batch = _random_batch(3, 1, (5, 3), torch.Generator().manual_seed(0), missing=0.2, dtype=torch.float32)
    batch = batch.to("meta")
    with pyro.validation_enabled(False):
        for program in (m.model, m.model_vectorized):
            assert _observed_log_prob(program, batch).device.type == "meta"
        loc, cov = m.smooth(batch)
    assert loc.shape == (2, 5, 2) and cov.device.type == "meta"
