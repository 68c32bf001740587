"""Training objectives: the IWAE loss the trainer steps on is -(1/N) sum_b log (1/K) sum_k p(x_b, z_bk) /
q(z_bk | x_b) with N the batch's real steps; its gradient is autograd of that bound, checked against
the same bound written by hand in plain torch on a tiny DMM (the same draws); at K = 1 it is the
one-draw ELBO (Pyro's Trace_ELBO) draw for draw."""

import json
import math
import subprocess
import sys

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from dvae.data.batch import collate
from dvae.infer.objectives import IWAEObjective, make_objective
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model

LENGTHS = (5, 3, 4)  # padded batch: 12 real steps of 15


def _setup(objective="iwae", K=4, vectorized=False, family="dmm"):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family, x_dim=2, z_dim=2, rnn_dim=5, transition_dim=6, emission_dim=6)).double()
    g = np.random.default_rng(0)
    xs = [g.standard_normal((n, 2)) for n in LENGTHS]
    trainer = Trainer(model, TrainConfig(epochs=1, objective=objective, train_samples=K, vectorized=vectorized),
                      (xs, None), (xs, None))
    batch = collate([torch.from_numpy(x) for x in xs])
    return model, trainer, batch


def _grads(model):
    return {name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for name, p in model.named_parameters()}


def _zero(model):
    for p in model.parameters():
        p.grad = None


def _trainer_loss(trainer, batch, seed):
    """The trainer's IWAE loss of one update (value, gradients), as its SVI step computes it."""
    model = trainer.model
    _zero(model)
    pyro.set_rng_seed(seed)
    n = int(batch.lengths.sum())
    loss = trainer.elbo.loss_and_grads(trainer._model, trainer._guide, batch, 0.3, 1.0 / n)  # 0.3: ignored
    return float(loss), _grads(model)


def _hand_iwae(model, batch, K, seed):
    """-(1/N) sum_b log (1/K) sum_k p(x_b, z_bk) / q(z_bk | x_b) for the DMM with the dks guide, written
    with the model's networks and torch.distributions only; the K draws on the batch repeated K times
    (copy-major), drawn step by step with Normal.rsample as the per-step guide draws them."""
    from torch.distributions import Normal

    _zero(model)
    pyro.set_rng_seed(seed)
    B, T = batch.x.shape[:2]
    x = batch.x.repeat(K, 1, 1)  # (K*B, T, x_dim)
    mask = batch.mask.repeat(K, 1).to(x.dtype)  # (K*B, T)
    lengths = batch.lengths.repeat(K)
    h = model.encoder(x, lengths)  # (K*B, T, rnn_dim)
    z_q, zs, log_q = model.z_q_0.expand(K * B, -1), [], 0.0
    for t in range(T):
        loc, scale = model.combiner(z_q, h[:, t])
        z_q = Normal(loc, scale).rsample()
        log_q = log_q + Normal(loc, scale).log_prob(z_q).sum(-1) * mask[:, t]
        zs.append(z_q)
    log_p = 0.0
    for t in range(T):
        loc, scale = model.initial(K * B) if t == 0 else model.transition(zs[t - 1], None)
        log_p = log_p + Normal(loc, scale).log_prob(zs[t]).sum(-1) * mask[:, t]
        x_loc, x_scale = model.emitter(zs[t])
        log_p = log_p + Normal(x_loc, x_scale).log_prob(x[:, t]).sum(-1) * mask[:, t]
    log_w = (log_p - log_q).reshape(K, B)  # (K, B)
    bound = torch.logsumexp(log_w, 0) - math.log(K)  # (B,)
    loss = -bound.sum() / batch.lengths.sum()
    loss.backward()
    return loss.item(), _grads(model)


@pytest.mark.parametrize("K", [1, 4])
def test_the_iwae_loss_and_gradient_are_those_of_the_bound_written_by_hand(K):
    model, trainer, batch = _setup(K=K)
    value, grads = _trainer_loss(trainer, batch, seed=3)
    hand_value, hand_grads = _hand_iwae(model, batch, K, seed=3)
    assert value == pytest.approx(hand_value, rel=1e-10)
    assert set(grads) == set(hand_grads)
    for name in grads:
        torch.testing.assert_close(grads[name], hand_grads[name], rtol=1e-8, atol=1e-10, msg=name)
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_the_iwae_bound_grows_with_k_on_average():
    # E[IWAE_K] is non-decreasing in K (Burda et al.); averaged over draws the ordering shows
    model, trainer, batch = _setup()
    with torch.no_grad():
        means = []
        for K in (1, 16):
            obj = IWAEObjective(K)
            pyro.set_rng_seed(0)
            means.append(float(torch.stack([obj.bound(model.model, model.guide, batch).sum() for _ in range(30)]).mean()))
    assert means[1] > means[0]


@pytest.mark.parametrize("family", ["dmm", "vrnn", "vrae"])
def test_at_k_1_the_iwae_objective_is_the_one_draw_elbo_draw_for_draw(family):
    model, trainer, batch = _setup(K=1, family=family)
    n = int(batch.lengths.sum())
    for seed in (0, 1):
        value, grads = _trainer_loss(trainer, batch, seed)
        _zero(model)
        pyro.set_rng_seed(seed)
        elbo_loss = Trace_ELBO(max_plate_nesting=1).loss_and_grads(model.model, model.guide, batch)
        assert value == pytest.approx(elbo_loss / n, rel=1e-10)
        for name, p in model.named_parameters():
            expected = torch.zeros_like(p) if p.grad is None else p.grad / n
            torch.testing.assert_close(grads[name], expected, rtol=1e-8, atol=1e-10, msg=name)


def test_the_vectorized_program_gives_the_same_iwae_loss_and_gradient():
    model, per_step, batch = _setup(K=3, vectorized=False)
    value, grads = _trainer_loss(per_step, batch, seed=5)
    vectorized = Trainer(model, TrainConfig(epochs=1, objective="iwae", train_samples=3, vectorized=True),
                         ([x.numpy() for x in [batch.x[0]]], None), ([batch.x[0].numpy()], None))
    v_value, v_grads = _trainer_loss(vectorized, batch, seed=5)
    assert v_value == pytest.approx(value, rel=1e-9)
    for name in grads:
        torch.testing.assert_close(v_grads[name], grads[name], rtol=1e-7, atol=1e-9, msg=name)


def test_the_trainer_logs_the_elbo_terms_of_the_draws_and_validates_on_the_plain_elbo():
    model, trainer, batch = _setup(K=4)
    rows = trainer.fit(progress=False)
    row = rows[0]
    assert row["annealing_factor"] == 1.0  # no annealing under the iwae objective
    for key in ("train_loss", "train_recon_per_step", "train_kl_per_step", "valid_neg_elbo_per_step"):
        assert math.isfinite(row[key]), key
    # the training bound is the IWAE: at least the ELBO of the same draws (log-mean-exp >= mean of logs)
    assert row["train_loss"] <= row["train_neg_elbo_per_step"] + 1e-9


def test_objective_names_and_their_checks():
    assert isinstance(make_objective("iwae", 3), IWAEObjective)
    with pytest.raises(ValueError, match="unknown objective 'tmc'"):
        make_objective("tmc")
    with pytest.raises(ValueError, match="no free bits or beta"):
        make_objective("iwae", 2, free_bits=0.5)
    with pytest.raises(ValueError, match="integer number of samples >= 1"):
        IWAEObjective(0)


def _npz(tmp_path):
    path = tmp_path / "d.npz"
    g = np.random.default_rng(0)
    np.savez(path, obs=g.standard_normal((12, 7, 2)).astype(np.float32),
             actions=g.standard_normal((12, 6, 1)).astype(np.float32))
    return str(path)


TINY = ["--z-dim", "2", "--rnn-dim", "8", "--transition-dim", "8", "--emission-dim", "8", "--batch-size", "4",
        "--no-progress", "--no-plots"]


def test_dvae_train_with_the_iwae_objective(tmp_path):
    data, out = _npz(tmp_path), tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dvae.cli", "train", "--data", data, "--epochs", "2",
                           "--objective", "iwae", "--train-samples", "3", "--out", str(out)] + TINY,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())["train"]
    assert config["objective"] == "iwae" and config["train_samples"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["valid_neg_elbo_per_step"]) for r in rows)
    bad = subprocess.run([sys.executable, "-m", "dvae.cli", "train", "--data", data, "--epochs", "1",
                          "--objective", "iwae", "--free-bits", "0.5", "--out", str(tmp_path / "bad")] + TINY,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "--free-bits = 0.5: expected 0 with the iwae objective" in bad.stderr
