"""Conditional VRAE, DMM and DSAE: the condition c in the batch, the data files and the programs, and a
quick learning check that generated sequences follow the requested class. Also the bidirectional
encoder's reach."""

import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from dvae.data import collate, load_npz
from dvae.errors import DataError
from dvae.infer import DynamicalELBO, PosteriorCollapseWarning
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model, repeat_batch
from tests.conftest import make_batch


def tiny(family, c_dim=2, **kw):
    return build_model(ModelConfig(family, x_dim=3, u_dim=2, z_dim=4, rnn_dim=8, transition_dim=8,
                                   emission_dim=8, c_dim=c_dim, **kw)).double()


def with_c(batch, c_dim=2, seed=0):
    c = torch.randn(batch.batch_size, c_dim, generator=torch.Generator().manual_seed(seed)).double()
    return batch._replace(x=batch.x.double(), u=batch.u.double(), c=c)


# --- the batch and the files -------------------------------------------------------------------------
def test_collate_repeat_and_to_carry_the_condition():
    b = collate([torch.ones(3, 2), torch.ones(1, 2)], None, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    assert b.c.shape == (2, 2) and b.c_dim == 2 and b.check() is b
    r = repeat_batch(b, 3)
    assert r.c.shape == (6, 2) and torch.equal(r.c[2:4], b.c)  # copy-major, as x
    assert torch.equal(b.to("cpu").c, b.c)
    assert collate([torch.ones(2, 1)]).c is None and collate([torch.ones(2, 1)]).c_dim == 0


def test_npz_labels_become_one_hot_and_cond_is_kept(tmp_path):
    obs = np.zeros((4, 3, 1), np.float32)
    np.savez(tmp_path / "l.npz", obs=obs, labels=np.array([0, 2, 1, 2]))
    d = load_npz(str(tmp_path / "l.npz"))
    np.testing.assert_array_equal(d.cs, np.eye(3)[[0, 2, 1, 2]])
    assert d.c_dim == 3 and d.meta["num_labels"] == 3
    np.testing.assert_array_equal(d.conditions("all"), d.cs)
    np.testing.assert_array_equal(d.conditions("all", 5)[:, 3:], 0)  # widened for a model with more classes
    np.savez(tmp_path / "c.npz", obs=obs, cond=np.arange(8, dtype=np.float32).reshape(4, 2))
    d = load_npz(str(tmp_path / "c.npz"))
    np.testing.assert_array_equal(d.cs, np.arange(8).reshape(4, 2))
    with pytest.raises(DataError, match="conditions have 2 dims"):
        d.conditions("all", 3)
    assert load_npz(_save(tmp_path, "n.npz", obs=obs)).cs is None


def _save(tmp_path, name, **arrays):
    np.savez(tmp_path / name, **arrays)
    return str(tmp_path / name)


@pytest.mark.parametrize("arrays, message", [
    (dict(labels=np.array([0, 1, -1, 0])), "labels has -1 outside 0..1 at sequence 2"),
    (dict(labels=np.array([0.0, 1.0, 1.0, 0.0])), "labels must be an integer array"),
    (dict(labels=np.array([0, 1, 1])), r"labels must be an integer array of shape \(4,\)"),
    (dict(cond=np.array([[0.0], [np.nan], [1.0], [2.0]])), "cond has nan .* at sequence 1, dim 0"),
    (dict(cond=np.ones((3, 2))), r"cond must be a real array of shape \(4, c_dim\)"),
    (dict(cond=np.ones((4, 2)), labels=np.zeros(4, int)), "give either 'cond' or 'labels'"),
])
def test_bad_conditions_are_refused_naming_the_file_and_the_sequence(tmp_path, arrays, message):
    path = _save(tmp_path, "bad.npz", obs=np.zeros((4, 3, 1), np.float32), **arrays)
    with pytest.raises(DataError, match=f"bad.npz: {message}"):
        load_npz(path)


# --- the programs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["vrae", "dmm", "dsae"])
@pytest.mark.parametrize("vectorized", [False, True], ids=["per_step", "vectorized"])
def test_the_condition_reaches_the_guide_and_the_model(family, vectorized):
    """d loss / d c is non-zero through the guide alone and through the model alone."""
    m = tiny(family)
    with torch.no_grad():  # the DMM's p(z_0 | c) starts independent of c (zero weights): wake it up
        for p in m.parameters():
            if p.abs().sum() == 0 and p.dim() == 2:
                p.normal_(0, 0.3)
    batch = with_c(make_batch())
    model, guide = m.programs(vectorized)
    for block in ("model", "guide"):
        c = batch.c.clone().requires_grad_()
        c_other = batch.c.clone()  # the other program sees a constant c
        b_model = batch._replace(c=c if block == "model" else c_other)
        b_guide = batch._replace(c=c if block == "guide" else c_other)
        pyro.set_rng_seed(0)
        loss = DynamicalELBO().differentiable_loss(lambda _: model(b_model), lambda _: guide(b_guide), batch)
        (grad,) = torch.autograd.grad(loss, c)
        assert grad.abs().sum() > 0, block


def test_the_dmm_emitter_does_not_read_the_condition():
    m = tiny("dmm")
    batch = with_c(make_batch())
    pyro.set_rng_seed(0)
    guide_trace = poutine.trace(m.guide_vectorized).get_trace(batch)
    means, priors = [], []
    for c in (batch.c, -3 * batch.c):
        tr = poutine.trace(poutine.replay(m.model_vectorized, trace=guide_trace)).get_trace(batch._replace(c=c))
        means.append(tr.nodes["x"]["fn"].mean)  # (B, T, x_dim): emitter means at the same path
        priors.append(tr.nodes["z"]["fn"].params(tr.nodes["z"]["value"])[0])  # (B, T, z_dim): transition means
    torch.testing.assert_close(means[0], means[1], rtol=0, atol=0)
    assert not torch.allclose(priors[0][:, 1:], priors[1][:, 1:])  # while the transition does read c


@pytest.mark.parametrize("family", ["vrae", "dmm", "dsae"])
def test_generate_and_predict_take_the_condition(family):
    m = tiny(family)
    g = m.generate(5, u=torch.zeros(5, 2), num_samples=3, c=torch.tensor([1.0, 0.0]))
    assert g["x"].shape == (3, 5, 3)
    g = m.generate(5, u=torch.zeros(5, 2), num_samples=2, c=torch.eye(2))  # one condition per sample
    assert g["x"].shape == (2, 5, 3)
    with pytest.raises(ValueError, match="conditional"):
        m.generate(5, u=torch.zeros(5, 2))
    with pytest.raises(ValueError, match="not conditional"):
        tiny(family, c_dim=0).generate(5, u=torch.zeros(5, 2), c=torch.zeros(2))
    batch = with_c(make_batch())
    assert m.predict(batch, torch.zeros(3, 4, 2).double(), 4, num_samples=2)["x"].shape == (2, 3, 4, 3)
    with pytest.raises(ValueError, match="c_dim"):
        m.predict(batch._replace(c=None), torch.zeros(3, 4, 2).double(), 4)


@pytest.mark.parametrize("family", ["vrnn", "lgssm"])
def test_conditioning_and_bidirectional_are_refused_where_they_do_not_exist(family):
    with pytest.raises(ValueError, match="dmm and vrae"):
        build_model(ModelConfig(family, x_dim=3, c_dim=2))
    with pytest.raises(ValueError, match="dmm and vrae"):
        build_model(ModelConfig(family, x_dim=3, bidirectional=True))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_only_a_bidirectional_dmm_guide_reads_the_past(bidirectional):
    """q(z_{T-1} | .) of the mean-field guide depends on x_0 only through the forward RNN."""
    m = build_model(ModelConfig("dmm", x_dim=3, z_dim=4, rnn_dim=8, transition_dim=8, emission_dim=8,
                                guide="mean_field", bidirectional=bidirectional))
    batch = make_batch(lengths=(6, 4), u_dim=0)
    x = batch.x.clone().requires_grad_()
    h = m.encoder(x, batch.lengths)  # (B, T, rnn_dim or 2 rnn_dim)
    assert h.shape[-1] == (16 if bidirectional else 8)
    loc = m.combiner(None, h)[0]  # (B, T, z_dim)
    (grad,) = torch.autograd.grad(loc[0, 5].sum() + loc[1, 3].sum(), x)  # each sequence's last real step
    assert bool(grad[0, 0].abs().sum() > 0) == bidirectional and bool(grad[1, 0].abs().sum() > 0) == bidirectional
    assert grad[0, 5].abs().sum() > 0 and grad[1, 4:].abs().sum() == 0  # its own step; never the padding


def test_the_bidirectional_vrae_code_reads_both_final_states():
    m = build_model(ModelConfig("vrae", x_dim=3, z_dim=4, rnn_dim=8, transition_dim=8, emission_dim=8,
                                bidirectional=True))
    batch = make_batch(lengths=(6, 4), u_dim=0)
    enc = m.encoder
    with torch.no_grad():
        got = enc.final(batch.x, batch.lengths)  # (B, 16)
        for i, n in enumerate(batch.lengths.tolist()):
            x = batch.x[i:i + 1, :n]  # the sequence alone, unpadded
            forward = enc.rnn(x)[0][0, -1]  # the forward state after x_{n-1}
            backward = enc.rnn_back(x.flip(1))[0][0, -1]  # the backward state after reading back to x_0
            torch.testing.assert_close(got[i], torch.cat([forward, backward]))
        loc, _ = m.posterior_params(batch)
        torch.testing.assert_close(loc, m.posterior(got)[0])


# --- learning: generated sequences follow the requested class --------------------------------------
def two_class_ramps(n=64, num_steps=12, seed=0):
    """Class 0 rises by 2 over the sequence, class 1 falls by 2; each with a random offset N(0, 0.5^2)
    and noise N(0, 0.1^2). Returns xs (list of (T, 1)), one-hot cs (n, 2), labels (n,)."""
    g = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    t = np.arange(num_steps) / (num_steps - 1)
    xs = [((1 - 2 * k) * 2 * t + g.normal(0, 0.5) + 0.1 * g.standard_normal(num_steps))[:, None].astype(np.float32)
          for k in labels]
    return xs, np.eye(2, dtype=np.float32)[labels], labels


@pytest.mark.parametrize("family", ["vrae", "dmm", pytest.param("dsae", marks=pytest.mark.slow)])  # dsae: 2 s
def test_generated_sequences_follow_the_requested_class(family):
    xs, cs, _ = two_class_ramps()
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    m = build_model(ModelConfig(family, x_dim=1, z_dim=2, rnn_dim=16, transition_dim=16, emission_dim=16, c_dim=2))
    cfg = TrainConfig(epochs=10, batch_size=16, lr=1e-2, patience=0)
    with warnings.catch_warnings():  # the VRAE's code may collapse here (c carries the class): not the point
        warnings.simplefilter("ignore", PosteriorCollapseWarning)
        Trainer(m, cfg, (xs, None, cs), (xs[:16], None, cs[:16])).fit(progress=False)
    m.eval()
    for k in (0, 1):
        pyro.set_rng_seed(1)
        x = m.generate(12, c=torch.eye(2)[k], num_samples=200)["x_mean"][..., 0]  # (200, 12)
        rises = (x[:, -1] - x[:, 0] > 0).float().mean().item()
        assert (rises if k == 0 else 1 - rises) > 0.9, (k, rises)

