"""The dynamical ELBO against a hand computation, and its annealing, free bits and IW bound."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from dvae.infer import DynamicalELBO, elbo_terms, iw_bound
from dvae.models import ModelConfig, build_model
from tests.conftest import make_batch


def gaussian_kl(mq, sq, mp, sp):
    """Closed-form KL(N(mq, sq^2) || N(mp, sp^2)), summed over the last dim."""
    return (torch.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5).sum(-1)


def gaussian_logpdf(x, m, s):
    return (-0.5 * ((x - m) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)


def hand_dmm_elbo(dmm, batch, guide_trace, annealing=1.0):
    """sum_t log p(x_t | z_t) - annealing * sum_t KL(q(z_t | z_{t-1}, h_t) || p(z_t | z_{t-1}, u_{t-1})), by hand."""
    B, T = batch.batch_size, batch.num_steps
    z = torch.stack([guide_trace.nodes[f"z_{t}"]["value"] for t in range(T)], 1)  # (B, T, z_dim)
    h = dmm.encoder(torch.cat([batch.x, batch.u], -1), batch.lengths)
    total = 0.0
    z_q_prev = dmm.z_q_0.expand(B, -1)
    for t in range(T):
        m = batch.mask[:, t].float()
        mq, sq = dmm.combiner(z_q_prev, h[:, t])
        mp, sp = dmm.initial(B) if t == 0 else dmm.transition(z[:, t - 1], batch.u[:, t - 1])
        mx, sx = dmm.emitter(z[:, t])
        total = total + (m * (gaussian_logpdf(batch.x[:, t], mx, sx) - annealing * gaussian_kl(mq, sq, mp, sp))).sum()
        z_q_prev = z[:, t]
    return total


@pytest.mark.parametrize("annealing", [1.0, 0.3])
def test_dmm_elbo_equals_hand_computation(annealing):
    batch = make_batch()
    dmm = build_model(ModelConfig("dmm", x_dim=3, u_dim=2, z_dim=4, rnn_dim=8, transition_dim=8, emission_dim=8))
    pyro.set_rng_seed(1)
    loss = DynamicalELBO().loss(dmm.model, dmm.guide, batch, annealing)
    pyro.set_rng_seed(1)
    loss_tmf = TraceMeanField_ELBO().loss(dmm.model, dmm.guide, batch, annealing)
    pyro.set_rng_seed(1)
    guide_trace = poutine.trace(dmm.guide).get_trace(batch, annealing)
    expected = -hand_dmm_elbo(dmm, batch, guide_trace, annealing).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert loss_tmf == pytest.approx(expected, rel=1e-5)


def test_elbo_terms_put_each_step_in_its_place_and_zero_on_padding():
    batch = make_batch(lengths=(6, 2))
    dmm = build_model(ModelConfig("dmm", x_dim=3, u_dim=2, z_dim=4, rnn_dim=8, transition_dim=8, emission_dim=8))
    pyro.set_rng_seed(1)
    terms = elbo_terms(dmm.model, dmm.guide, batch)
    pyro.set_rng_seed(1)
    guide_trace = poutine.trace(dmm.guide).get_trace(batch)
    assert terms["elbo"].sum().item() == pytest.approx(hand_dmm_elbo(dmm, batch, guide_trace).item(), rel=1e-5)
    assert (terms["log_lik"][1, 2:] == 0).all() and (terms["kl"][1, 2:] == 0).all()
    assert (terms["kl"][:, :2] > 0).all()


@pytest.mark.parametrize("family, num_real", [("vrae", 2), ("dmm", 6 + 3), ("vrnn", 6 + 3), ("vae", 6 + 3)])
def test_free_bits_floor_the_kl_per_dimension(family, num_real):
    batch = make_batch(lengths=(6, 3))
    m = build_model(ModelConfig(family, x_dim=3, u_dim=2, z_dim=4, rnn_dim=8, transition_dim=8, emission_dim=8))
    pyro.set_rng_seed(1)
    terms = elbo_terms(m.model, m.guide, batch)
    big = 100.0  # far above the actual KL: each site's KL counts as big * z_dim per real entry
    pyro.set_rng_seed(1)
    loss = DynamicalELBO(free_bits=big).loss(m.model, m.guide, batch)
    assert loss == pytest.approx(-terms["log_lik"].sum().item() + big * 4 * num_real, rel=1e-5)
    pyro.set_rng_seed(1)  # a floor below the KL changes nothing
    assert DynamicalELBO(free_bits=1e-9).loss(m.model, m.guide, batch) == pytest.approx(
        -terms["elbo"].sum().item(), rel=1e-5)


def test_free_bits_stop_the_gradient_below_the_floor():
    batch = make_batch(lengths=(5, 5))
    vrae = build_model(ModelConfig("vrae", x_dim=3, u_dim=2, z_dim=4, rnn_dim=8, transition_dim=8, emission_dim=8))
    loss = DynamicalELBO(free_bits=100.0).differentiable_loss(vrae.model, vrae.guide, batch)
    loss.backward()
    # the posterior's scale enters only the KL (and the sampled z): with the KL floored, the encoder's
    # gradient comes from the reconstruction alone, which is finite; the emitter still learns
    assert vrae.emitter.raw_scale.grad is not None and vrae.emitter.raw_scale.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["dmm", "vrnn", "vrae", "vae", "storn", "srnn", "rssm",
                                    pytest.param("dsae", marks=pytest.mark.slow),  # dsae: 9 s on a shared core
                                    pytest.param("kvae", marks=pytest.mark.slow)])  # kvae: 16 s on a shared core
def test_iw_bound_with_one_sample_is_an_unbiased_elbo_estimate(family):
    batch = make_batch(lengths=(4, 3))
    m = build_model(ModelConfig(family, x_dim=3, u_dim=2, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    pyro.set_rng_seed(2)
    iw1 = iw_bound(m.model, m.guide, batch, num_samples=4000, chunk=4000)  # K=4000: near log p(x)
    draws = torch.stack([iw_bound(m.model, m.guide, batch, num_samples=1) for _ in range(400)])  # (400, B)
    analytic = elbo_terms(m.model, m.guide, batch, num_particles=400)["elbo"]
    se = draws.std(0) / math.sqrt(400)
    assert ((draws.mean(0) - analytic).abs() < 5 * se + 0.05 * analytic.abs()).all()
    assert (iw1 >= analytic - 5 * se).all()  # IW bound with many samples is at least the ELBO


def test_a_second_trainer_in_one_process_trains_its_own_model():
    from dvae.infer.trainer import TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(6, 3, generator=g).numpy() for _ in range(8)]
    cfg = ModelConfig("dmm", x_dim=3, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8)
    for _ in range(2):  # no pyro.clear_param_store() between the two
        model = build_model(cfg)
        before = model.emitter.raw_scale.detach().clone()
        Trainer(model, TrainConfig(epochs=1, batch_size=4, patience=0), (xs, None), (xs, None)).fit(progress=False)
        assert not torch.equal(before, model.emitter.raw_scale)


def _count_reads(monkeypatch):
    """Count every read of a tensor's value by the host (item, tolist, float, int, bool): on a GPU, each
    is a host-device synchronisation."""
    counts = {"n": 0}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            counts["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("family", ["dmm", "vrnn", "vrae", "storn", "srnn", "rssm", "dsae", "kvae"])
def test_the_elbos_update_reads_nothing_back_from_the_device(family, monkeypatch):
    """DynamicalELBO.loss_and_grads (the forward and backward of a training update, vectorized program)
    leaves the loss and the logged terms as tensors: no value is read by the host (distribution
    validation off: its checks read every parameter), and the terms equal what it used to read."""
    torch.manual_seed(0)
    m = build_model(ModelConfig(family, x_dim=3, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    batch = make_batch(lengths=(5, 3), u_dim=0)
    model, guide = m.programs(vectorized=True)
    elbo = DynamicalELBO()
    with pyro.validation_enabled(False):
        pyro.set_rng_seed(1)
        reference = elbo.differentiable_loss(model, guide, batch)
        counts = _count_reads(monkeypatch)
        pyro.set_rng_seed(1)
        loss = elbo.loss_and_grads(model, guide, batch)
        reads = counts["n"]
    monkeypatch.undo()
    assert reads == 0
    assert torch.is_tensor(loss) and not loss.requires_grad
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert set(elbo.last_term_tensors) == {"log_lik", "kl"}
    assert elbo.last_terms["kl"] > 0 if family != "kvae" else math.isfinite(elbo.last_terms["kl"])  # kvae: sampled KL


def test_the_trainer_reads_the_logged_terms_every_n_updates_with_the_same_sums(monkeypatch):
    from dvae.infer.trainer import TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(6, 3, generator=g).numpy() for _ in range(14)]  # 4 batches of 4, 4, 4, 2
    cfg = ModelConfig("dmm", x_dim=3, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8)
    rows, flushes = {}, {}
    for every in (1, 3):
        torch.manual_seed(0)
        trainer = Trainer(build_model(cfg), TrainConfig(epochs=1, batch_size=4, patience=0), (xs, None), (xs, None))
        trainer.log_every = every
        calls = {"n": 0}
        real = trainer._flush_terms

        def counted(acc=None, _real=real, _calls=calls):
            _calls["n"] += 1
            return _real(acc)

        monkeypatch.setattr(trainer, "_flush_terms", counted)
        rows[every] = trainer.train_epoch()
        flushes[every] = calls["n"]
    assert flushes == {1: 4 + 1, 3: 1 + 1}  # every update / after the 3rd; and at the end of the epoch
    for key in ("train_loss", "train_recon_per_step", "train_kl_per_step"):
        assert rows[3][key] == pytest.approx(rows[1][key], rel=1e-12) and math.isfinite(rows[1][key])


def test_a_split_held_on_the_device_gives_the_batches_and_the_training_of_per_batch_collation():
    """ResidentSequences gathers what collate pads (x, u, mask, lengths, c), and a Trainer holding its
    split once (``resident_data=True``, forced on CPU) trains exactly as one collating every batch."""
    import numpy as np

    from dvae.data import collate
    from dvae.data.batch import ResidentSequences
    from dvae.infer.trainer import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 3)).astype(np.float32) for n in rng.integers(1, 9, size=11)]
    us = [rng.standard_normal((len(x), 2)).astype(np.float32) for x in xs]
    cs = rng.standard_normal((11, 2)).astype(np.float32)
    held = ResidentSequences(xs, us, cs)
    for idx in ([3, 0, 7], [5], list(range(11))):
        got = held.batch(torch.tensor(idx), max(len(xs[i]) for i in idx))
        want = collate([torch.from_numpy(xs[i]) for i in idx], [torch.from_numpy(us[i]) for i in idx],
                       [torch.as_tensor(cs[i]) for i in idx])
        for a, b in zip(got, want):
            assert (a is None) == (b is None)
            if a is not None:
                assert a.dtype == b.dtype and torch.equal(a, b)
    with pytest.raises(ValueError, match="missing"):
        ResidentSequences([np.full((2, 3), np.nan, np.float32)])

    cfg = ModelConfig("dmm", x_dim=3, u_dim=2, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8)
    rows = {}
    for resident in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(build_model(cfg), TrainConfig(epochs=2, batch_size=4, patience=0), (xs, us), (xs, us))
        trainer.resident_data = resident
        rows[resident] = trainer.fit(progress=False)
        assert (trainer._resident_split() is not None) == resident
    for a, b in zip(rows[False], rows[True]):
        for key in ("train_loss", "train_recon_per_step", "train_kl_per_step", "valid_neg_elbo_per_step"):
            assert a[key] == b[key], key
