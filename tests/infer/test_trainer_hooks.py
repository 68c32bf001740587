"""``Trainer.fit``'s public hooks (``on_update``, ``on_validate``, ``evaluating``, ``diagnostics``) and
``Trainer.validate``: what budgets and benchmark curves are built on (``studies.compare.budget``,
``bench/bench_quality.py``, ``bench/bench_convergence.py``) instead of the trainer's private methods."""

import contextlib

import numpy as np
import pyro
import torch

from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model

DIAGNOSTICS = {"valid_kl_per_dim", "active_units", "posterior_mean_var", "posterior_collapse"}


def _xs(n, seed, length=5):
    g = np.random.default_rng(seed)
    return [g.standard_normal((length, 2)).astype(np.float32) for _ in range(n)]  # n of (T, x_dim)


def _trainer(**train):
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    model = build_model(ModelConfig("dmm", x_dim=2, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    return Trainer(model, TrainConfig(**{"epochs": 3, "batch_size": 2, "patience": 0, **train}),
                   (_xs(6, seed=0), None), (_xs(4, seed=1), None))


def test_on_update_sees_every_update_booked_with_its_loss():
    t = _trainer()
    assert t.batches_per_epoch == 3
    returned = []  # what the SVI step returned, update by update
    step = t.svi.step
    t.svi.step = lambda *a, **k: returned.append(step(*a, **k)) or returned[-1]
    seen = []
    t.fit(progress=False, on_update=lambda loss: seen.append((loss, t.state["step"], t.state["batch_in_epoch"])))
    assert [s[0] for s in seen] == returned and len(returned) == 9  # 3 epochs of 3 updates
    assert [s[1] for s in seen] == list(range(1, 10))  # called after the update is counted
    assert [s[2] for s in seen] == [1, 2, 3] * 3


def test_a_stop_requested_from_on_update_ends_training_before_the_next_update():
    t = _trainer()
    updates = []

    def on_update(loss):
        updates.append(loss)
        if len(updates) == 4:
            t.request_stop()

    rows = t.fit(progress=False, on_update=on_update)
    assert len(updates) == t.state["step"] == 4 and t.state["batch_in_epoch"] == 1
    assert len(rows) == 1 and t.stopped and t.state["stop_reason"] == "interrupted"


def test_each_epoch_is_evaluated_inside_evaluating_and_on_validate_gets_validate_s_bounds():
    t = _trainer()
    inside = [False]
    log = []

    @contextlib.contextmanager
    def evaluating():
        log.append("enter")
        inside[0] = True
        try:
            yield
        finally:
            inside[0] = False
            log.append("exit")

    validate = t.validate
    outs = []

    def watched_validate():
        assert inside[0], "validation ran outside evaluating"
        outs.append(validate())
        return outs[-1]

    t.validate = watched_validate

    def on_validate(out):
        assert inside[0], "on_validate ran outside evaluating"
        log.append(out)

    rows = t.fit(progress=False, evaluating=evaluating, on_validate=on_validate)
    assert log == [x for out in outs for x in ("enter", out, "exit")] and len(outs) == 3
    assert [r["valid_neg_elbo_per_step"] for r in rows] == [o["neg_elbo_per_step"] for o in outs]
    assert [r["valid_kl_per_step"] for r in rows] == [o["kl_per_step"] for o in outs]


def test_skipping_the_diagnostics_leaves_training_exactly_as_it_was():
    """The diagnostics draw under their own random stream: without them the same rows (less their
    keys and the wall seconds) and the same parameters, bit for bit."""
    with_them = _trainer()  # one trainer at a time: each starts from a clean Pyro parameter store
    rows_with = with_them.fit(progress=False)
    without = _trainer()
    rows_without = without.fit(progress=False, diagnostics=False)
    assert all(DIAGNOSTICS <= r.keys() for r in rows_with) and not any(DIAGNOSTICS & r.keys() for r in rows_without)

    def plain(rows):
        return [{k: v for k, v in r.items() if k != "epoch_seconds" and k not in DIAGNOSTICS} for r in rows]

    assert plain(rows_with) == plain(rows_without) and len(rows_with) == 3
    for a, b in ((with_them.model.state_dict(), without.model.state_dict()), (with_them.best_model, without.best_model)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
