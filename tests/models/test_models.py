"""Shapes, padding, determinism and checkpoint round trips of every model family."""

import io

import pyro
import pytest
import torch
from pyro import poutine

from dvae.data import collate
from dvae.infer import elbo_terms
from dvae.models import ModelConfig, build_model
from tests.conftest import make_batch

FAMILIES = ["dmm", "vrnn", "vrae", "vae", "storn", "srnn", "rssm", "dsae", "kvae"]


def tiny(family, u_dim=2, **kw):
    return build_model(ModelConfig(family, x_dim=3, u_dim=u_dim, z_dim=4, rnn_dim=8, transition_dim=8,
                                   emission_dim=8, **kw))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("u_dim", [0, 2])
@pytest.mark.parametrize("rnn_type", ["gru", "lstm", "rnn"])
def test_model_shapes_with_and_without_controls(family, u_dim, rnn_type):
    m = tiny(family, u_dim, rnn_type=rnn_type)
    batch = make_batch(u_dim=u_dim)  # B=3, T=7
    tr = poutine.trace(m.model).get_trace(batch)
    for t in range(7):
        assert tr.nodes[f"x_{t}"]["value"].shape == (3, 3) and tr.nodes[f"x_{t}"]["is_observed"]
    if family == "vrae":
        assert tr.nodes["z"]["value"].shape == (3, 4)
        assert m.encode(batch, num_samples=5)["z"].shape == (5, 3, 4)
    else:
        assert all(tr.nodes[f"z_{t}"]["value"].shape == (3, 4) for t in range(7))
        assert m.encode(batch, num_samples=5)["z"].shape == (5, 3, 7, 4)
    u = torch.randn(6, u_dim) if u_dim else None
    g = m.generate(6, u=u, num_samples=2)
    assert g["x"].shape == (2, 6, 3) and g["x_mean"].shape == (2, 6, 3)
    u_future = torch.randn(3, 4, u_dim) if u_dim else None
    p = m.predict(batch, u_future, horizon=4, num_samples=5)
    assert p["x"].shape == (5, 3, 4, 3) and p["x_mean"].shape == (5, 3, 4, 3) and p["z"].shape == (5, 3, 4, 4)
    assert m.reconstruct(batch, num_samples=2)["x_mean"].shape == (2, 3, 7, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_leaves_the_real_steps_unchanged(family):
    m = tiny(family)
    g = torch.Generator().manual_seed(3)
    x, u = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    plain = collate([x], [u])
    padded = collate([x, torch.zeros(9, 3)], [u, torch.zeros(9, 2)])  # the same sequence, padded to 9 steps
    padded = padded._replace(x=padded.x[:1], u=padded.u[:1], mask=padded.mask[:1], lengths=padded.lengths[:1])
    padded.x[0, 5:] = 100.0  # garbage in the padding must not leak into the real steps
    pyro.set_rng_seed(7)
    a = elbo_terms(m.model, m.guide, plain)
    pyro.set_rng_seed(7)
    b = elbo_terms(m.model, m.guide, padded)
    torch.testing.assert_close(b["log_lik"][:, :5], a["log_lik"])
    torch.testing.assert_close(b["kl"][:, :5], a["kl"])
    assert (b["log_lik"][:, 5:] == 0).all() and (b["kl"][:, 5:] == 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_and_predict_are_deterministic_under_a_seed(family):
    m = tiny(family)
    batch = make_batch()
    u_future = torch.randn(3, 4, 2)
    outs = []
    for _ in range(2):
        pyro.set_rng_seed(11)
        outs.append((m.generate(5, u=torch.zeros(5, 2), num_samples=3)["x"], m.predict(batch, u_future, 4, 6)["x"]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=0)
    pyro.set_rng_seed(12)
    assert not torch.equal(m.generate(5, u=torch.zeros(5, 2), num_samples=3)["x"], outs[0][0])


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_round_trip_gives_identical_outputs(family):
    m = tiny(family)
    buf = io.BytesIO()
    torch.save({"model": m.state_dict()}, buf)
    buf.seek(0)
    m2 = tiny(family)
    m2.load_state_dict(torch.load(buf, weights_only=True)["model"])
    batch = make_batch()
    outs = []
    for model in (m, m2):
        pyro.set_rng_seed(5)
        outs.append((elbo_terms(model.model, model.guide, batch)["elbo"], model.predict(batch, torch.ones(3, 2, 2), 2, 3)["x"]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=0)


def test_dmm_mean_field_guide_ignores_the_previous_latent():
    m = tiny("dmm", guide="mean_field")
    h = torch.randn(2, m.encoder.out_dim)  # (B, width of h_t: both directions by default)
    a = m.combiner(torch.randn(2, 4), h)
    b = m.combiner(torch.randn(2, 4), h)
    torch.testing.assert_close(a, b)


def test_predict_rolls_out_from_each_sequences_own_context_end():
    m = tiny("dmm", u_dim=0)
    batch = make_batch(lengths=(6, 3), u_dim=0)
    short = collate([batch.x[1, :3]])
    pyro.set_rng_seed(3)
    both = m.predict(batch, None, 5, num_samples=200)["x_mean"].mean(0)  # (2, 5, 3)
    pyro.set_rng_seed(3)
    alone = m.predict(short, None, 5, num_samples=200)["x_mean"].mean(0)  # (1, 5, 3)
    torch.testing.assert_close(both[1], alone[0], atol=0.15, rtol=0)
