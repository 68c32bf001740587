"""``studies.compare.budget``: a training budget in CPU seconds of the process, the clock paused while the
model is validated; the study's ``fit`` records which kind of budget each row had."""

import copy
import time

import pyro
import pytest
import torch

from dvae.data import Normalizer
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model
from studies.compare import _bounds as B
from studies.compare.budget import Clock, CpuBudget, train_best
from studies.compare.exact import collect_data


def _burn(seconds: float) -> None:
    """Spend ``seconds`` of this process's CPU time."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_clock_counts_only_while_running():
    c = Clock()
    c.resume()
    _burn(0.05)
    c.pause()
    _burn(0.1)  # paused: not counted
    assert 0.05 <= c.used < 0.09 and c.now() == c.used
    c.resume()
    _burn(0.05)
    assert 0.1 <= c.now() < 0.14


@pytest.fixture(scope="module")
def lg():
    data, _ = collect_data(episodes=12, steps=10, seed=0)
    out = data, Normalizer.fit(*data.subset("train"))
    _trainer(out, epochs=1).fit(progress=False)  # the process's first update is slow (a second, once): done here
    return out


def _trainer(lg, **train):
    data, norm = lg
    pyro.set_rng_seed(0)
    model = build_model(ModelConfig("dmm", x_dim=data.x_dim, u_dim=data.u_dim, z_dim=2, rnn_dim=8, transition_dim=8,
                                    emission_dim=8, bidirectional=False))  # the cheaper guide: updates well under 0.05 CPU s
    return Trainer(model, TrainConfig(**{"epochs": 10_000, "batch_size": 2, "patience": 10_000, **train}),
                   B.prepare(data, norm, "train"), B.prepare(data, norm, "valid"), norm.log_det_per_step)


def test_training_stops_at_the_first_update_past_the_budget_and_validation_is_not_counted(lg):
    trainer = _trainer(lg, batch_size=10)
    assert trainer.batches_per_epoch == 1  # an epoch is one update, then a validation
    validate = trainer.validate
    validations = []

    def slow_validate():  # 0.15 CPU s per validation, more than the whole budget: none of it counted
        _burn(0.15)
        validations.append(1)
        return validate()

    trainer.validate = slow_validate
    update_cpu = []
    step = trainer.svi.step

    def slow_step(*a, **k):  # 0.06 CPU s an update at least: the budget of 0.1 runs out in the second
        t = time.process_time()
        _burn(0.06)
        out = step(*a, **k)
        update_cpu.append(time.process_time() - t)
        return out

    trainer.svi.step = slow_step
    run = CpuBudget(trainer, 0.1)
    run.fit()
    assert run.exhausted and run.stop_reason == "cpu_budget"
    assert run.updates == len(update_cpu) == 2 and len(validations) == 2 and trainer.state["epoch"] == 2
    # the clock stops at the first update boundary past the budget, the validations left out
    assert 0.1 <= run.clock.used < sum(update_cpu) + 0.05
    assert run.epochs == 2


def test_the_part_epoch_cut_short_is_validated_and_kept(lg):
    trainer = _trainer(lg)
    assert trainer.batches_per_epoch == 5  # the 10 training sequences of 12, in batches of 2
    step = trainer.svi.step

    def slow_step(*a, **k):  # 0.2 CPU s an update: the budget of 0.5 runs out in the third (while an update's
        _burn(0.2)            # own cost is under 0.05 CPU s)
        return step(*a, **k)

    trainer.svi.step = slow_step
    run = CpuBudget(trainer, 0.5)
    seen = []
    run.on_validate = lambda out: seen.append(out["neg_elbo_per_step"])
    run.fit()
    assert run.updates == 3 and trainer.state["epoch"] == 0 and trainer.state["batch_in_epoch"] == 3
    assert len(seen) == 1  # the part-epoch's validation, the only one: its parameters are the best
    assert trainer.best_model is not None and trainer.state["best_valid"] == seen[0]
    assert trainer.state["best_epoch"] == 0.6 and run.epochs == 0.6


def test_a_wall_clock_limit_is_refused(lg):
    with pytest.raises(ValueError, match="time_limit"):
        CpuBudget(_trainer(lg, time_limit=5.0), 1.0)
    with pytest.raises(ValueError, match="positive"):
        CpuBudget(_trainer(lg), 0.0)


def test_fit_records_a_cpu_budget_and_old_rows_read_as_wall(lg):
    data, norm = lg
    _, info = B.fit("vae", data, norm, 0.2, seed=0)
    assert info["budget_kind"] == "cpu" and info["train_cpu_seconds"] >= 0.2 or info["stop_reason"] != "cpu_budget"
    assert B.budget_cell(info, 150.0) == "150 CPU s" and isinstance(B.cpu_cell(info), float)
    old = {"train_seconds": 61.7, "epochs": 56, "run": {"date": "2026-12-01", "load_average": [0.75, 2.05]}}
    assert B.budget_kind(old) == "wall" and B.budget_cell(old, 150.0) == "150 wall s" and B.cpu_cell(old) == "n/a"
    note = B.budget_note([info, old])
    assert '"CPU s"' in note and '"wall s"' in note and "2026-12-01" in note and "between 0.8 and 2.0" in note
    assert '"wall s"' not in B.budget_note([info])
    assert B.stop_cell({"stop_reason": "cpu_budget"}) == "budget" and B.stop_cell({"stop_reason": "converged"}) == \
        "early stopping"
    # a wall-clock row of before: ended well before its limit, so early stopping ended it
    assert B.stop_cell(old, 150.0) == "early stopping (before the limit)" and B.stop_cell(old, 62.0) == "not recorded"


class _FakeCpu:
    """A process clock (``time.process_time``) that moves only when told: 1 s an update and 100 s a
    validation (instrumented below), nothing else; so the budget's stop falls on a known update."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def instrument(self, trainer) -> None:
        step, validate = trainer.svi.step, trainer.validate

        def step_one_second(*a, **k):
            out = step(*a, **k)
            self.t += 1.0
            return out

        def validate_a_hundred_seconds():
            self.t += 100.0
            return validate()

        trainer.svi.step, trainer.validate = step_one_second, validate_a_hundred_seconds


class _OldRule:
    """CpuBudget's rule as it was before the trainer had hooks (its own wrappers around the update and
    the validation, the latent diagnostics left on: they do not change training), kept as the oracle."""

    def __init__(self, trainer, seconds, on_validate):
        self.trainer, self.clock, self.updates, self.exhausted = trainer, Clock(), 0, False
        step, validate = trainer.svi.step, trainer.validate

        def timed_step(*a, **k):
            loss = step(*a, **k)
            self.updates += 1
            if self.clock.now() >= seconds:
                self.exhausted = True
                trainer.request_stop()
            return loss

        def paused_validate():
            with self.clock.paused():
                out = validate()
                on_validate(out)
                return out

        trainer.svi.step, trainer.validate = timed_step, paused_validate
        self.validate = paused_validate

    def fit(self):
        t = self.trainer
        self.clock.resume()
        rows = t.fit(progress=False)
        self.clock.pause()
        if self.exhausted and t.state["batch_in_epoch"] > 0:
            out = self.validate()
            if out["neg_elbo_per_step"] < t.state["best_valid"]:
                epochs = t.state["epoch"] + t.state["batch_in_epoch"] / t.batches_per_epoch
                t.state.update(best_valid=out["neg_elbo_per_step"], best_epoch=round(epochs, 2))
                t.best_model = copy.deepcopy(t.model.state_dict())
        return rows


DIAGNOSTICS = {"valid_kl_per_dim", "active_units", "posterior_mean_var", "posterior_collapse"}


def _plain(rows):
    """The rows without their timings and latent diagnostics."""
    return [{k: v for k, v in r.items() if k != "epoch_seconds" and k not in DIAGNOSTICS} for r in rows]


def _untimed(state):
    """The trainer's state without its wall-clock seconds."""
    out = {k: v for k, v in state.items() if k != "train_seconds"}
    out["partial"] = {k: v for k, v in state["partial"].items() if k != "seconds"}
    return out


def _same_parameters(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("seconds", [10.0, 12.0])
def test_a_budget_run_trains_exactly_as_before_the_hooks(lg, monkeypatch, seconds):
    """A seeded run under a budget on a fake CPU clock (1 s an update, 100 s a validation): the budget
    of 10 s ends training at the end of epoch 2 (it equals an unbudgeted run of 2 epochs), that of 12 s
    after the second update of epoch 3 (the part-epoch validated); either way the same metric rows,
    parameters, best parameters and counts as the rule of before, and no validation second counted."""
    fake = _FakeCpu()
    monkeypatch.setattr(time, "process_time", fake)
    runs = {}
    for how in ("hooks", "old"):
        fake.t = 0.0
        trainer = _trainer(lg)
        assert trainer.batches_per_epoch == 5
        fake.instrument(trainer)
        seen = []
        run = CpuBudget(trainer, seconds, on_validate=seen.append) if how == "hooks" else \
            _OldRule(trainer, seconds, seen.append)
        rows = run.fit()
        runs[how] = trainer, rows, seen, run
        assert run.exhausted and run.updates == seconds and run.clock.used == seconds  # validations: paused
        assert ("active_units" in rows[0]) == (how == "old")  # the budget skips the diagnostics
        if how == "hooks":
            assert run.longest_update == 1.0  # every update took its second, nothing else counted
    (new, new_rows, new_seen, run), (old, old_rows, old_seen, _) = runs["hooks"], runs["old"]
    assert _plain(new_rows) == _plain(old_rows) and len(new_rows) == 2
    assert new_seen == old_seen and len(new_seen) == (2 if seconds == 10.0 else 3)
    _same_parameters(new.model.state_dict(), old.model.state_dict())
    _same_parameters(new.best_model, old.best_model)
    assert _untimed(new.state) == _untimed(old.state)
    assert run.epochs == seconds / 5 and run.stop_reason == "cpu_budget"
    if seconds == 10.0:  # the budget ran out at an epoch's end: an unbudgeted run of 2 epochs, no budget at all
        free = _trainer(lg, epochs=2)
        free_rows = free.fit(progress=False)
        assert _plain(free_rows) == _plain(new_rows) and free.state["stop_reason"] == "epochs"
        _same_parameters(free.model.state_dict(), new.model.state_dict())
        _same_parameters(free.best_model, new.best_model)
    else:
        assert new.state["best_epoch"] in (2, 2.4) and new.state["batch_in_epoch"] == 2


def test_diagnostics_kept_on_request_are_not_counted_and_change_nothing(lg, monkeypatch):
    """``diagnostics=True``: the rows carry them, the clock is paused around them too (50 fake seconds
    each), and the training is the budget run's without them."""
    import dvae.infer.diagnostics as diagnostics_module

    fake = _FakeCpu()
    monkeypatch.setattr(time, "process_time", fake)
    report = diagnostics_module.latent_report

    def slow_report(*a, **k):
        fake.t += 50.0
        return report(*a, **k)

    monkeypatch.setattr(diagnostics_module, "latent_report", slow_report)
    runs = []
    for diagnostics in (True, False):
        fake.t = 0.0
        trainer = _trainer(lg)
        fake.instrument(trainer)
        run = CpuBudget(trainer, 7.0, diagnostics=diagnostics)
        rows = run.fit()
        assert run.clock.used == 7.0 and run.updates == 7 and len(rows) == 1
        assert ("active_units" in rows[0]) == diagnostics
        runs.append((trainer, rows))
    (a, rows_a), (b, rows_b) = runs
    assert _plain(rows_a) == _plain(rows_b)
    _same_parameters(a.model.state_dict(), b.model.state_dict())
    _same_parameters(a.best_model, b.best_model)


def test_train_best_leaves_the_best_parameters_in_eval_mode_and_denormals_as_they_were(lg):
    trainer = _trainer(lg, epochs=3)
    seen = []  # the parameters at each validation, scripted so that the first epoch's are the best

    def scripted_validate():
        seen.append(copy.deepcopy(trainer.model.state_dict()))
        v = [1.0, 2.0, 3.0][len(seen) - 1]
        return {"neg_elbo_per_step": v, "recon_per_step": v, "kl_per_step": 0.0}

    trainer.validate = scripted_validate
    run = train_best(trainer, 100.0)  # the epoch cap ends it, long before the budget
    assert run.stop_reason == "epochs" and run.updates == 15 and not run.exhausted and len(seen) == 3
    assert not trainer.model.training and trainer.state["best_epoch"] == 1
    _same_parameters(trainer.model.state_dict(), seen[0])  # the best, not the last
    assert not all(torch.equal(seen[0][k], seen[2][k]) for k in seen[0])
    assert torch.tensor([1e-40]) * 1.0 != 0  # the process-wide flush flag is off again
