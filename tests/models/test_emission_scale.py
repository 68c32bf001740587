"""The state-dependent observation scale (``ModelConfig.emission_scale = "state"``): the scale varies with
the emitter's input, the ELBO equals a hand computation with the emitter written out, the config round
trips, and a config.json written before the field existed loads as "constant"."""

import json
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from dvae.infer import DynamicalELBO
from dvae.models import ModelConfig, build_model
from dvae.run import read_config
from tests.conftest import make_batch


def small(family, **kw):
    return ModelConfig(family, x_dim=3, u_dim=2, z_dim=4, rnn_dim=8, transition_dim=8, emission_dim=8, **kw)


@pytest.mark.parametrize("family", ["dmm", "vrnn", "vrae", "vae", "rvae", "storn", "srnn", "rssm", "dsae", "kvae"])
def test_state_scale_varies_with_the_input_and_constant_does_not(family):
    torch.manual_seed(0)
    state = build_model(small(family, emission_scale="state")).emitter
    const = build_model(small(family)).emitter
    f = torch.randn(5, state.net[0].in_features)
    _, s_state = state(f)
    _, s_const = const(f)
    assert s_state.shape == s_const.shape == (5, 3)
    assert (s_state.std(0) > 1e-4).all()  # a different scale for each input
    assert torch.equal(s_const, s_const[:1].expand(5, 3))  # one scale for every input
    assert not hasattr(state, "raw_scale")


def test_vrnn_scale_reads_the_recurrent_state_too():
    torch.manual_seed(0)
    m = build_model(small("vrnn", emission_scale="state"))
    z = torch.randn(1, 4).expand(2, 4)
    state0 = m.initial_state(2)[0]
    h = torch.randn(2, 8)
    s = m.emission({"z": z, "rec": h}).base_dist.scale  # same z_t, two h_{t-1}
    assert not torch.allclose(s[0], s[1])
    del state0


def gaussian_logpdf(x, m, s):
    return (-0.5 * ((x - m) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mq, sq, mp, sp):
    return (torch.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5).sum(-1)


@pytest.mark.parametrize("vectorized", [False, True])
def test_dmm_elbo_with_state_scale_equals_hand_computation(vectorized):
    batch = make_batch(lengths=(3, 2))
    dmm = build_model(small("dmm", emission_scale="state"))
    model, guide = dmm.programs(vectorized)
    pyro.set_rng_seed(1)
    loss = DynamicalELBO().loss(model, guide, batch)
    pyro.set_rng_seed(1)
    tr = poutine.trace(dmm.guide).get_trace(batch)
    B, T = batch.batch_size, batch.num_steps
    z = torch.stack([tr.nodes[f"z_{t}"]["value"] for t in range(T)], 1)  # (B, T, z_dim)
    h = dmm.encoder(torch.cat([batch.x, batch.u], -1), batch.lengths)
    total, z_q_prev = 0.0, dmm.z_q_0.expand(B, -1)
    for t in range(T):
        m = batch.mask[:, t].float()
        mq, sq = dmm.combiner(z_q_prev, h[:, t])
        mp, sp = dmm.initial(B) if t == 0 else dmm.transition(z[:, t - 1], batch.u[:, t - 1])
        out = dmm.emitter.net(z[:, t])  # the emitter written out: (loc, raw) = g(z_t)
        mx, sx = out[:, :3], F.softplus(out[:, 3:]) + 1e-3
        total = total + (m * (gaussian_logpdf(batch.x[:, t], mx, sx) - gaussian_kl(mq, sq, mp, sp))).sum()
        z_q_prev = z[:, t]
    assert loss == pytest.approx(-total.item(), rel=1e-5)


def test_lgssm_refuses_a_state_scale():
    with pytest.raises(ValueError, match="emission_scale 'state'"):
        build_model(small("lgssm", emission_scale="state"))


def test_conv_emitter_state_scale():
    torch.manual_seed(0)
    m = build_model(ModelConfig("dmm", x_dim=64, z_dim=4, rnn_dim=8, transition_dim=8, emission_dim=8,
                                frame_shape=[8, 8], emission_scale="state"))
    loc, scale = m.emitter(torch.randn(5, 4))
    assert loc.shape == scale.shape == (5, 64) and (scale.std(0) > 0).all()


def test_cli_trains_with_state_scale(tmp_path, capsys):
    from tests.conftest import run_cli

    out = tmp_path / "run"
    code, res, err = run_cli(capsys, "train", "--model", "vrnn", "--epochs", "1", "--episodes", "4", "--steps", "10",
                             "--emission-scale", "state", "--out", out, "--no-progress", "--no-plots", "--z-dim", "2",
                             "--rnn-dim", "8")
    assert code == 0, err
    assert read_config(str(out)).model.emission_scale == "state"  # the config round trip
    path = out / "config.json"
    d = json.loads(path.read_text())
    del d["model"]["emission_scale"]  # a run written before the field existed
    path.write_text(json.dumps(d))
    assert read_config(str(out)).model.emission_scale == "constant"
    d["model"]["emission_scale"] = "wobbly"
    path.write_text(json.dumps(d))
    with pytest.raises(Exception, match="emission_scale"):
        read_config(str(out))
