"""The seeds' VRAE decoder (``vrae_decoder="feedback"``): s_t = RNN([x_{t-1}, z, u_{t-1}], s_{t-1}),
teacher-forced in training, fed its own samples in generation."""

import json

import pyro
import pytest
import torch
from pyro import poutine

from dvae.data import collate
from dvae.infer import DynamicalELBO
from dvae.models import ModelConfig, build_model
from tests.conftest import make_batch
from tests.models.family_cli import cli_cycle


def feedback(u_dim=2, **kw):
    return build_model(ModelConfig("vrae", x_dim=3, u_dim=u_dim, z_dim=4, rnn_dim=8, transition_dim=8,
                                   emission_dim=8, vrae_decoder="feedback", **kw))


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
def test_per_step_and_vectorized_forms_agree(rnn_type):
    batch = make_batch(lengths=(5, 3))
    m = feedback(rnn_type=rnn_type)
    losses = []
    for vectorized in (False, True):
        pyro.set_rng_seed(3)
        losses.append(DynamicalELBO().loss(*m.programs(vectorized), batch))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_contract_step_by_step_equals_the_teacher_forced_decoder():
    batch = make_batch(lengths=(4, 4))
    m = feedback()
    z = torch.randn(2, 4)
    s_path = m.decoder_states(batch, z)  # (B, T, rnn_dim)
    state, _ = m.initial_state(2)
    state = m.with_latent(state, z)
    for t in range(4):
        if t:
            state, p = m.transition_step(state, batch.x[:, t - 1], batch.u[:, t - 1])
            assert torch.equal(p.sample(), z)  # the code carries over
        torch.testing.assert_close(state["s"], s_path[:, t])


def test_generate_feeds_back_its_own_samples():
    m = feedback(u_dim=0)
    pyro.set_rng_seed(7)
    out = m.generate(3, num_samples=2)
    pyro.set_rng_seed(7)  # the contract run by hand, in the order the program draws
    with torch.no_grad():
        state, p_z = m.initial_state(2)
        z = p_z.sample()
        state = m.with_latent(state, z)
        xs = []
        for t in range(3):
            if t:
                state, _ = m.transition_step(state, xs[-1])
            xs.append(m.emission(state).sample())
        x = torch.stack(xs, 1)
    torch.testing.assert_close(out["z"], z)
    torch.testing.assert_close(out["x"], x)
    with torch.no_grad():  # and the decoder does read x_{t-1}: zeros in its place give another s_1
        s0 = m.with_latent(m.initial_state(2)[0], z)
        assert not torch.allclose(m.transition_step(s0, xs[0])[0]["s"], m.transition_step(s0, 0 * xs[0])[0]["s"])


def test_padding_leaves_the_real_steps_loss_unchanged():
    short = make_batch(lengths=(3,))
    m = feedback()
    long = collate([short.x[0], torch.randn(6, 3)], [short.u[0], torch.randn(6, 2)])
    for vectorized in (False, True):
        pyro.set_rng_seed(1)
        tr = poutine.trace(m.programs(vectorized)[1]).get_trace(long)
        z = tr.nodes["z"]["value"][:1]
        lp_long = poutine.trace(poutine.condition(m.model, {"z": tr.nodes["z"]["value"]})).get_trace(long)
        lp_short = poutine.trace(poutine.condition(m.model, {"z": z})).get_trace(short)
        a = sum(lp_long.nodes[f"x_{t}"]["fn"].log_prob(long.x[:, t])[0] for t in range(3))
        b = sum(lp_short.nodes[f"x_{t}"]["fn"].log_prob(short.x[:, t])[0] for t in range(3))
        torch.testing.assert_close(a, b)


def test_cli_feedback_cycle_and_an_old_vrae_run_loads(capsys, tmp_path):
    cli_cycle(capsys, tmp_path / "fb", "--model", "vrae", "--vrae-decoder", "feedback")
    cli_cycle(capsys, tmp_path / "old", "--model", "vrae", plan=False)
    path = tmp_path / "old" / "config.json"
    d = json.loads(path.read_text())
    del d["model"]["vrae_decoder"], d["model"]["emission_scale"]  # a run written before the options
    path.write_text(json.dumps(d))
    from dvae.cli import main
    assert main(["eval", str(tmp_path / "old")]) == 0
