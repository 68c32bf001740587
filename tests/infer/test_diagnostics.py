"""beta, the elbo helper, the logged terms, KL per dimension, active units and the collapse warning."""

import math
import warnings

import numpy as np
import pyro
import pytest
import torch

import dvae
from dvae.infer import DynamicalELBO, elbo_terms
from dvae.infer.diagnostics import (CollapseMonitor, PosteriorCollapseWarning, active_units, latent_columns,
                                    latent_report)
from dvae.infer.evaluation import evaluate
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model
from tests.infer.test_vectorized import VARIANTS, loss_and_grads, ragged, tiny

TIGHT = dict(rtol=1e-9, atol=1e-9)


def test_elbo_is_the_reconstruction_minus_beta_times_the_kl():
    assert dvae.elbo(-3.0, 2.0) == -5.0
    assert dvae.elbo(-3.0, 2.0, beta=0.25) == -3.5
    assert dvae.elbo(1.5, 0.0, beta=7.0) == 1.5
    assert dvae.elbo is dvae.infer.elbo
    with pytest.raises(ValueError, match="beta"):
        dvae.elbo(0.0, 1.0, beta=-1.0)
    with pytest.raises(ValueError, match="beta"):
        DynamicalELBO(beta=math.nan)


@pytest.mark.parametrize("family, guide", VARIANTS)
@pytest.mark.parametrize("vectorized", [False, True], ids=["per_step", "vectorized"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 4.0])
def test_beta_weights_the_kl_exactly(family, guide, vectorized, beta):
    """-loss = sum log p(x_t | z_t) - beta * sum KL_t, with the terms of elbo_terms on the same draw."""
    m = tiny(family, 2, guide)
    batch = ragged(2)
    program = m.programs(vectorized=vectorized)
    pyro.set_rng_seed(5)
    terms = elbo_terms(*program, batch)
    pyro.set_rng_seed(5)
    loss = DynamicalELBO(beta=beta).loss(*program, batch)
    expected = dvae.elbo(terms["log_lik"].sum().item(), terms["kl"].sum().item(), beta)
    assert loss == pytest.approx(-expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("family, guide", [("dmm", "dks"), ("vrnn", "dks"), ("vrae", "dks")])
@pytest.mark.parametrize("vectorized", [False, True], ids=["per_step", "vectorized"])
def test_beta_composes_with_annealing_and_free_bits(family, guide, vectorized):
    m = tiny(family, 2, guide)
    batch = ragged(2)
    program = m.programs(vectorized=vectorized)
    # beta and the annealing factor multiply: beta 2 at annealing 0.3 is beta 1 at annealing 0.6, gradients too
    a = loss_and_grads(m, *program, batch, DynamicalELBO(beta=2.0, free_bits=0.05), annealing=0.3)
    b = loss_and_grads(m, *program, batch, DynamicalELBO(beta=1.0, free_bits=0.05), annealing=0.6)
    torch.testing.assert_close(a[0], b[0], **TIGHT)
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], **TIGHT)
    # free bits floor the KL before beta weights it: a floor far above the KL gives beta * floor * z_dim per entry
    pyro.set_rng_seed(5)
    log_lik = elbo_terms(*program, batch)["log_lik"].sum().item()
    entries = 3 if family == "vrae" else int(batch.mask.sum())  # the VRAE has one KL per sequence
    pyro.set_rng_seed(5)
    loss = DynamicalELBO(beta=3.0, free_bits=100.0).loss(*program, batch)
    assert loss == pytest.approx(-(log_lik - 3.0 * 100.0 * 4 * entries), rel=1e-12)


@pytest.mark.parametrize("family, guide", VARIANTS)
def test_the_elbo_records_the_plain_terms_of_the_last_batch(family, guide):
    m = tiny(family, 2, guide)
    batch = ragged(2)
    elbo = DynamicalELBO(beta=3.0, free_bits=0.2, num_particles=2)  # none of these enters last_terms
    pyro.set_rng_seed(6)
    elbo.loss(*m.programs(vectorized=True), batch, 0.4)
    pyro.set_rng_seed(6)
    draws = [elbo_terms(*m.programs(vectorized=True), batch) for _ in range(2)]  # the same two draws, in turn
    for key in ("log_lik", "kl"):
        assert elbo.last_terms[key] == pytest.approx(sum(d[key].sum().item() for d in draws) / 2, rel=1e-9)


# --- KL per dimension and active units --------------------------------------------------------------
def _data(n=6, length=5, x_dim=3, seed=0, ragged=True):
    g = np.random.default_rng(seed)
    return [g.standard_normal((length - (i % 2 if ragged else 0), x_dim)) for i in range(n)]  # lengths 5 and 4


def _hand_kl(loc, scale):
    """KL(N(loc, scale) || N(0, 1)) per dimension."""
    return 0.5 * (loc ** 2 + scale ** 2 - 1) - np.log(scale)


def test_vrae_kl_per_dim_and_active_units_against_a_hand_computation():
    m = tiny("vrae", 0)
    with torch.no_grad():  # dimension 1 of the posterior mean ignores the data: it cannot be active
        m.posterior.net[-1].weight[1].zero_()
        m.posterior.net[-1].weight[0] *= 20.0  # dimension 0 varies strongly
    xs = _data()
    report = latent_report(m, xs, None, batch_size=4)
    from dvae.data import collate

    batch = collate([torch.from_numpy(x) for x in xs])
    loc, scale = (v.detach().numpy() for v in m.posterior_params(batch))  # (N, z_dim) each
    num_steps = sum(len(x) for x in xs)
    np.testing.assert_allclose(report["kl_per_dim"], _hand_kl(loc, scale).sum(0) / num_steps, rtol=1e-9)
    variance = loc.var(0)
    np.testing.assert_allclose(report["posterior_mean_var"], variance, rtol=1e-9, atol=1e-15)
    assert report["active_units"] == int((variance > 0.01).sum())
    assert variance[1] < 1e-20 and variance[0] > 0.01  # the hand-made structure holds
    assert 1 <= report["active_units"] <= 3


def test_dmm_mean_field_kl_per_dim_and_active_units_against_a_hand_computation():
    m = tiny("dmm", 0, "mean_field")
    with torch.no_grad():
        m.combiner.loc.weight[2].zero_()  # dimension 2's mean is the constant bias: inactive
        m.combiner.loc.weight[0] *= 30.0
    xs = _data(ragged=False)  # one batch in file order, so the hand computation draws the same path
    from dvae.data import collate

    batch = collate([torch.from_numpy(x) for x in xs])
    with torch.no_grad():
        h = m.encoder(batch.x, batch.lengths)
        loc_q, scale_q = (v.numpy() for v in m.combiner(None, h))  # (B, T, z_dim): q(z_t | h_t)
        pyro.set_rng_seed(3)
        z = m.guide(batch).numpy()  # the path the report's guide draws (same seed, same normals)
    real = batch.mask.numpy()
    for vectorized in (False, True):  # both forms of the program give the same report
        pyro.set_rng_seed(3)
        report = latent_report(m, xs, None, batch_size=len(xs), vectorized=vectorized)
        kl = np.zeros(4)
        for t in range(batch.num_steps):
            if t == 0:
                mp, sp = (v.detach().numpy() for v in m.initial(batch.batch_size))
            else:
                mp, sp = (v.detach().numpy() for v in m.transition(torch.from_numpy(z[:, t - 1])))
            lq, sq = loc_q[:, t], scale_q[:, t]
            step = np.log(sp / sq) + (sq ** 2 + (lq - mp) ** 2) / (2 * sp ** 2) - 0.5  # (B, z_dim)
            kl += (step * real[:, t, None]).sum(0)
        np.testing.assert_allclose(report["kl_per_dim"], kl / real.sum(), rtol=1e-7)
        variance = loc_q[real].var(0)  # over the observed (sequence, step) pairs
        np.testing.assert_allclose(report["posterior_mean_var"], variance, rtol=1e-9, atol=1e-15)
        assert report["active_units"] == int((variance > 0.01).sum()) and variance[2] < 1e-20


# the flow guide and the KVAE have no KL per dimension: tests/models/test_guides.py::test_latent_diagnostics_of_the_iaf_guide,
# tests/models/test_kvae.py::test_latent_diagnostics_have_no_kl_per_dimension
@pytest.mark.parametrize("family, guide", [v for v in VARIANTS if "iaf" not in v[1] and v[0] != "kvae"])
def test_kl_per_dim_sums_to_the_kl_per_step_in_both_forms(family, guide):
    m = tiny(family, 0, guide)
    xs = _data()
    cs = np.random.default_rng(1).standard_normal((len(xs), 2)) if m.config.c_dim else None
    pyro.set_rng_seed(2)
    kl_per_step = evaluate(m, xs, None, batch_size=4, cs=cs)["kl_per_step"]  # the per-step program
    reports = []
    for vectorized in (False, True):
        pyro.set_rng_seed(2)
        reports.append(latent_report(m, xs, None, cs, batch_size=4, vectorized=vectorized))
    np.testing.assert_allclose(reports[1]["kl_per_dim"], reports[0]["kl_per_dim"], rtol=1e-9)
    np.testing.assert_allclose(reports[1]["posterior_mean_var"], reports[0]["posterior_mean_var"], rtol=1e-9)
    assert sum(reports[0]["kl_per_dim"]) == pytest.approx(kl_per_step, rel=1e-9)
    dims = 4 + (m.v_dim if family == "dsae" else 0)  # the DSAE's code v lists its dimensions before z's
    assert len(reports[0]["kl_per_dim"]) == dims and all(k >= 0 for k in reports[0]["kl_per_dim"])


def test_latent_columns_leave_out_padded_steps():
    m = tiny("dmm")
    batch = ragged()
    (col,) = latent_columns(m.model_vectorized, m.guide_vectorized, batch)
    assert col.kl.shape == (3, 7, 4) and col.loc.shape == (3, 7, 4)
    assert torch.equal(col.real, batch.mask) and (col.kl[~batch.mask] == 0).all()


def test_active_units_counts_variances_above_the_threshold():
    means = np.array([[0.0, 1.0, 5.0], [0.2, 1.0, 5.1], [0.4, 1.0, 5.0]])  # variances 0.0267, 0, 0.00222
    count, variance = active_units(means)
    np.testing.assert_allclose(variance, [0.08 / 3, 0.0, 0.02 / 9])
    assert count == 1
    assert active_units(means, threshold=0.001)[0] == 2


def test_latent_report_is_none_without_latent_sites():
    m = build_model(ModelConfig("lgssm", x_dim=3, z_dim=2))
    assert latent_report(m, [x.astype(np.float32) for x in _data()], None) is None


# --- posterior collapse -----------------------------------------------------------------------------
def test_collapse_monitor_needs_consecutive_low_epochs():
    mon = CollapseMonitor(threshold=0.01, epochs=3)
    flags = [mon.update(kl) for kl in [0.5, 0.001, 0.002, 0.5, 0.0, 0.0, 0.009, 0.0, 0.2]]
    assert flags == [False, False, False, False, False, False, True, True, False]
    assert CollapseMonitor(0.01, 2, count=1).update(0.0)  # a resumed count carries on


def _levels(n=16, length=6, seed=0):
    """Sequences that are each a constant level plus small noise: the code has one number to carry."""
    g = np.random.default_rng(seed)
    return [(3 * g.standard_normal((1, 2)) + 0.1 * g.standard_normal((length, 2))).astype(np.float32)
            for _ in range(n)]


def _fit(beta):
    torch.manual_seed(0)
    xs = _levels()
    m = build_model(ModelConfig("vrae", x_dim=2, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    cfg = TrainConfig(epochs=5, batch_size=4, lr=3e-2, patience=0, beta=beta, anneal_epochs=0, collapse_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = Trainer(m, cfg, (xs, None), (xs[:8], None)).fit(progress=False)
    return rows, [w for w in caught if issubclass(w.category, PosteriorCollapseWarning)]


def test_a_forced_collapse_warns_once_and_flags_the_metrics():
    rows, caught = _fit(beta=1000.0)  # the KL weighted a thousandfold: q(z | x) is pushed onto the prior
    assert [r["posterior_collapse"] for r in rows][-3:] == [True] * 3
    assert all(r["valid_kl_per_step"] < 0.01 for r in rows if r["posterior_collapse"])
    assert len(caught) == 1 and "posterior collapse" in str(caught[0].message)
    assert rows[-1]["active_units"] == 0


def test_an_informative_code_does_not_warn():
    rows, caught = _fit(beta=1.0)
    assert not any(r["posterior_collapse"] for r in rows) and not caught
    assert rows[-1]["valid_kl_per_step"] > 0.1 and rows[-1]["active_units"] >= 1
    for r in rows:  # the logged terms: the bound is the reconstruction plus the KL
        assert r["valid_neg_elbo_per_step"] == pytest.approx(r["valid_recon_per_step"] + r["valid_kl_per_step"])
        assert r["train_neg_elbo_per_step"] == pytest.approx(r["train_recon_per_step"] + r["train_kl_per_step"])
        assert sum(r["valid_kl_per_dim"]) == pytest.approx(r["valid_kl_per_step"], rel=1e-5)


def test_the_diagnostics_leave_the_training_trajectory_unchanged(monkeypatch):
    """latent_report draws from the guide; the trainer forks the RNG around it, so training with and
    without it follows the same random stream."""
    import dvae.infer.diagnostics as diagnostics_module

    xs = _levels(n=8)
    losses = []
    for patch in (False, True):
        if patch:
            monkeypatch.setattr(diagnostics_module, "latent_report", lambda *a, **k: None)
        torch.manual_seed(0)
        pyro.set_rng_seed(0)
        m = build_model(ModelConfig("dmm", x_dim=2, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
        rows = Trainer(m, TrainConfig(epochs=3, batch_size=4, patience=0), (xs, None), (xs[:4], None)).fit(progress=False)
        losses.append([r["train_loss"] for r in rows])
        assert ("active_units" in rows[0]) != patch
    assert losses[0] == losses[1]
