"""The RVAE (Leglaive et al. 2020), causal and non-causal: the ELBO against a hand computation, the two
program forms, padding, generation through the contract, and what the non-causal form refuses."""

import math

import pyro
import pytest
import torch
from pyro import poutine

from dvae.data import collate
from dvae.infer import DynamicalELBO
from dvae.models import ModelConfig, build_model
from tests.conftest import make_batch
from tests.models.family_cli import cli_cycle


def rvae(causal=True, u_dim=2, **kw):
    return build_model(ModelConfig("rvae", x_dim=3, u_dim=u_dim, z_dim=2, rnn_dim=5, transition_dim=6,
                                   emission_dim=6, rvae_causal=causal, **kw))


def logpdf(x, m, s):
    return (-0.5 * ((x - m) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)


def kl_std(m, s):
    """KL(N(m, s^2) || N(0, 1)), summed over the last dim."""
    return (-torch.log(s) + (s ** 2 + m ** 2) / 2 - 0.5).sum(-1)


def rnn_loop(rnn_cell, inputs, h):
    """A cell looped by hand over inputs (T, d) from h (1, H): (T, H)."""
    out = []
    for y in inputs:
        h = rnn_cell(y[None], h)
        out.append(h[0])
    return torch.stack(out)


def hand_elbo(m, batch, z):
    """sum_b sum_{t < L_b} [log p(x_t | h_t) - KL(q(z_t | z_{<t}, x, u) || N(0, I))], every recurrence
    looped by hand over each sequence's real steps alone (GRU cells; the bidirectional ones as two cells)."""
    total = 0.0
    for b in range(batch.batch_size):
        L = int(batch.lengths[b])
        x, u = batch.x[b, :L], batch.u[b, :L]
        u_prev = torch.cat([torch.zeros(1, u.shape[1]), u[:-1]])  # (L, u_dim)
        dec_in = torch.cat([z[b, :L], u_prev], -1)
        h = rnn_loop(m.decoder.cell, dec_in, m.decoder.h_0[None])  # (L, H): h_t
        enc = m.encoder.rnn_back if m.encoder.rnn_back is not None else m.encoder.rnn
        cell = torch.nn.GRUCell(enc.input_size, enc.hidden_size)
        cell.load_state_dict({k.replace("_l0", ""): v for k, v in enc.state_dict().items()})
        g = rnn_loop(cell, torch.cat([x, u_prev], -1).flip(0), torch.zeros(1, enc.hidden_size)).flip(0)  # x_{t:L}
        if not m.causal:
            fcell = torch.nn.GRUCell(m.encoder.rnn.input_size, m.encoder.rnn.hidden_size)
            fcell.load_state_dict({k.replace("_l0", ""): v for k, v in m.encoder.rnn.state_dict().items()})
            g = torch.cat([rnn_loop(fcell, torch.cat([x, u_prev], -1), torch.zeros(1, 5)), g], -1)
            bcell = torch.nn.GRUCell(m.decoder_back.input_size, m.decoder_back.hidden_size)
            bcell.load_state_dict({k.replace("_l0", ""): v for k, v in m.decoder_back.state_dict().items()})
            h = torch.cat([h, rnn_loop(bcell, dec_in.flip(0), torch.zeros(1, 5)).flip(0)], -1)
        k = m.z_rnn.h_0[None]
        for t in range(L):
            qm, qs = m.posterior(torch.cat([g[t], k[0]])[None])
            xm, xs = m.emitter(h[t][None])
            total = total + logpdf(x[t], xm[0], xs[0]) - kl_std(qm[0], qs[0])
            k = m.z_rnn.cell(z[b, t][None], k)
    return total


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("vectorized", [False, True])
def test_elbo_equals_hand_computation(causal, vectorized):
    batch = make_batch(lengths=(3, 2))
    m = rvae(causal)
    model, guide = m.programs(vectorized)
    pyro.set_rng_seed(4)
    loss = DynamicalELBO().loss(model, guide, batch)
    pyro.set_rng_seed(4)
    z = m.guide(batch)  # the same normals in the same order in both forms
    assert loss == pytest.approx(-hand_elbo(m, batch, z).item(), rel=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_program_forms_agree_with_padding(causal):
    batch = make_batch(lengths=(6, 4, 1))
    m = rvae(causal)
    losses = []
    for vectorized in (False, True):
        pyro.set_rng_seed(2)
        losses.append(DynamicalELBO().loss(*m.programs(vectorized), batch))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def row_log_weight(m, batch, zs):
    """log p(x, z) - log q(z) of the first sequence at the given latents zs (list of (z_dim,), its real steps)."""
    B, T = batch.batch_size, batch.num_steps
    data = {f"z_{t}": torch.zeros(B, 2) for t in range(T)}
    for t, z in enumerate(zs):
        data[f"z_{t}"][0] = z
    g = poutine.trace(poutine.condition(m.guide, data)).get_trace(batch)
    p = poutine.trace(poutine.condition(m.model, data)).get_trace(batch)
    g.compute_log_prob(), p.compute_log_prob()
    lp = sum(p.nodes[n]["log_prob"][0] for n in p.nodes if n.startswith(("x_", "z_")))
    return lp - sum(g.nodes[n]["log_prob"][0] for n in g.nodes if n.startswith("z_"))


@pytest.mark.parametrize("causal", [True, False])
def test_padding_leaves_the_real_steps_unchanged(causal):
    short = make_batch(lengths=(3,))
    long = collate([short.x[0], torch.randn(6, 3)], [short.u[0], torch.randn(6, 2)])  # row 0 padded to 6
    m = rvae(causal)
    zs = list(torch.randn(3, 2))
    torch.testing.assert_close(row_log_weight(m, long, zs), row_log_weight(m, short, zs))


def test_generate_equals_the_contract_run_by_hand():
    m = rvae(True)
    u = torch.randn(3, 2)
    pyro.set_rng_seed(9)
    out = m.generate(3, u=u, num_samples=2)
    pyro.set_rng_seed(9)
    with torch.no_grad():
        state, p = m.initial_state(2)
        xs, zs = [], []
        for t in range(3):
            if t:
                state, p = m.transition_step(state, xs[-1], u[t - 1].expand(2, 2))
            zs.append(p.sample())
            state = m.with_latent(state, zs[-1])
            xs.append(m.emission(state).sample())
    torch.testing.assert_close(out["z"], torch.stack(zs, 1))
    torch.testing.assert_close(out["x"], torch.stack(xs, 1))


def test_causal_predicts_and_filters():
    from dvae.infer.smc import model_particle_filter

    m = rvae(True)
    batch = make_batch(lengths=(5, 3))
    pred = m.predict(batch, torch.randn(2, 4, 2), horizon=4, num_samples=3)
    assert pred["x"].shape == (3, 2, 4, 3)
    assert torch.isfinite(model_particle_filter(m, batch, 20)).all()


def test_noncausal_generates_but_refuses_step_by_step_use():
    from dvae.infer.smc import filter_for
    from dvae.world_model import WorldModel

    m = rvae(False)
    out = m.generate(4, u=torch.randn(4, 2), num_samples=3)
    assert out["x"].shape == (3, 4, 3) and out["z"].shape == (3, 4, 2)
    batch = make_batch(lengths=(5, 3))
    for call in (lambda: m.predict(batch, torch.randn(2, 4, 2), horizon=4), lambda: filter_for(m),
                 lambda: WorldModel(m, None), lambda: m.initial_state(2)):
        with pytest.raises(ValueError, match="non-causal RVAE .* not a forward state-space model"):
            call()
    assert m.reconstruct(batch, 2)["x_mean"].shape == (2, 2, 5, 3)


def test_cli_causal_cycle(capsys, tmp_path):
    cli_cycle(capsys, tmp_path / "r", "--model", "rvae")


def test_cli_noncausal_trains_evaluates_and_refuses_the_filter_and_plan(capsys, tmp_path):
    from dvae.cli import main

    cli_cycle(capsys, tmp_path / "r", "--model", "rvae", "--rvae-noncausal", particles=False, plan=False)
    assert main(["eval", str(tmp_path / "r"), "--particles", "10"]) != 0
    assert "non-causal RVAE" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "r"), "--env", "Pendulum-v1", "--episodes", "1", "--max-steps", "3",
                 "--horizon", "2", "--num-samples", "4", "--iterations", "1", "--no-baselines"]) != 0
    assert "non-causal RVAE" in capsys.readouterr().err
