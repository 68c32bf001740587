"""Training budgets in CPU seconds of the training process, robust to other jobs on the machine.

A wall-clock time limit (``TrainConfig.time_limit``) gives a model fewer updates when the machine is
busy; the comparison study (``studies.compare``) and the benchmarks (``bench/bench_quality.py``,
``bench/bench_convergence.py``) instead give every run the same number of CPU seconds of its own
process (``time.process_time()``, which counts all of the process's threads: run with one torch thread
to compare like with like), with the clock paused while the model is evaluated. The one implementation
of that clock and budget is here (the benchmarks' arm of ``Trainer.fit`` runs under :class:`CpuBudget`
too; bench_quality's Pyro-example arm, a loop of its own, uses :class:`Clock`). It stands on
``Trainer``'s public hooks alone.

    budget = CpuBudget(trainer, seconds=150.0)
    budget.fit()            # Trainer.fit, stopped at the first update boundary past 150 CPU seconds
    budget.clock.used       # the training CPU seconds spent (validation excluded)
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from typing import Callable, Iterator, Optional


class Clock:
    """Training CPU seconds of this process (``time.process_time``), paused while evaluating."""

    def __init__(self):
        self.used, self._since = 0.0, None

    @property
    def running(self) -> bool:
        return self._since is not None

    def resume(self):
        self._since = time.process_time()

    def pause(self):
        self.used += time.process_time() - self._since
        self._since = None

    def now(self) -> float:
        return self.used + (0.0 if self._since is None else time.process_time() - self._since)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The clock paused inside (if it was running; resumed after), e.g. around an evaluation."""
        running = self.running
        if running:
            self.pause()
        try:
            yield
        finally:
            if running:
                self.resume()


class CpuBudget:
    """Run ``trainer.fit`` (a ``dvae.infer.trainer.Trainer`` with no wall-clock ``time_limit``) until
    ``seconds`` of training CPU time have been spent, or until it stops on its own (epochs, early
    stopping).

    The clock runs while the trainer trains and is paused around each epoch's validation (which still
    chooses the best parameters, as in ``dvae train``); the per-epoch latent diagnostics, drawn under
    their own random stream so that they do not change training, are skipped (``diagnostics=True``: kept
    in the rows, the clock paused around them too). When the budget runs out inside an epoch, that
    part-epoch's parameters are validated too (clock paused) and kept as the best if they are
    (``keep_last``), as a wall-clock limit's last part-epoch is.

    ``on_validate(out)``: called after every validation with its result, the clock paused.

    After :meth:`fit`: ``clock.used`` (training CPU seconds), ``updates``, ``wall_seconds``, ``exhausted``,
    ``longest_update`` (the most training CPU seconds between two update boundaries: an update and the
    bookkeeping around it: about the most the budget is overrun by), :attr:`epochs`, :attr:`stop_reason`.

    Built on the trainer's public hooks alone (``Trainer.fit``'s ``on_update``, ``on_validate``,
    ``evaluating`` and ``diagnostics``; ``Trainer.validate``): after every update the budget is checked,
    and once spent, ``request_stop`` ends training at the next update boundary."""

    def __init__(self, trainer, seconds: float, on_validate: Optional[Callable[[dict], None]] = None,
                 keep_last: bool = True, diagnostics: bool = False):
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"CpuBudget: seconds must be a positive number, got {seconds!r}")
        if getattr(trainer.config, "time_limit", None) is not None:
            raise ValueError("CpuBudget: the trainer has a wall-clock time_limit; set it to None")
        self.trainer, self.seconds, self.keep_last = trainer, float(seconds), keep_last
        self.on_validate, self.diagnostics = on_validate, diagnostics
        self.clock = Clock()
        self.updates = 0
        self.longest_update = 0.0
        self._last_update = 0.0  # the clock at the last update boundary
        self.wall_seconds = 0.0
        self.exhausted = False
        """True when the budget ended training (not epochs or early stopping)."""

    def _after_update(self, loss: float) -> None:
        """One update done; a stop at the next update boundary once the budget is spent."""
        self.updates += 1
        now = self.clock.now()
        self.longest_update = max(self.longest_update, now - self._last_update)
        self._last_update = now
        if now >= self.seconds:
            self.exhausted = True
            self.trainer.request_stop()

    def _validated(self, out: dict) -> None:
        if self.on_validate is not None:
            self.on_validate(out)

    def validate(self) -> dict:
        """The trainer's validation with the clock paused (then ``on_validate``)."""
        with self.clock.paused():
            out = self.trainer.validate()
            self._validated(out)
            return out

    def fit(self) -> list:
        """``trainer.fit`` under the budget; returns its metric rows. ``stop_reason`` then says why it ended."""
        t = self.trainer
        t0 = time.perf_counter()
        self._last_update = self.clock.now()
        self.clock.resume()
        try:
            rows = t.fit(progress=False, on_update=self._after_update, on_validate=self._validated,
                         evaluating=self.clock.paused, diagnostics=self.diagnostics)
        finally:
            self.clock.pause()
        if self.exhausted and self.keep_last and t.state.get("batch_in_epoch", 0) > 0:
            out = self.validate()  # the part-epoch trained before the budget ran out
            if out["neg_elbo_per_step"] < t.state["best_valid"]:
                t.state.update(best_valid=out["neg_elbo_per_step"], best_epoch=round(self.epochs, 2))
                t.best_model = copy.deepcopy(t.model.state_dict())
        self.wall_seconds = time.perf_counter() - t0
        return rows

    @property
    def epochs(self) -> float:
        """The epochs trained: the finished ones plus the part of the one the budget cut short (then the
        trainer's ``best_epoch`` may be such a fraction too)."""
        t = self.trainer
        return t.state["epoch"] + t.state.get("batch_in_epoch", 0) / max(1, t.batches_per_epoch)

    @property
    def stop_reason(self) -> str:
        """cpu_budget, or the trainer's own reason (epochs, converged)."""
        return "cpu_budget" if self.exhausted else str(self.trainer.state.get("stop_reason"))


def train_best(trainer, seconds: float) -> CpuBudget:
    """``trainer.fit`` under ``CpuBudget(trainer, seconds)``, denormal floats flushed to zero on the CPU
    as ``dvae train`` does (the process-wide flag switched back after), then the best-on-validation
    parameters loaded into ``trainer.model`` (where a validation ran), the model in eval mode: the
    study's fit before scoring. Returns the budget (``clock.used``, ``updates``, ``epochs``,
    ``stop_reason``, ``wall_seconds``)."""
    import torch

    run = CpuBudget(trainer, seconds)
    flush = trainer.device.type == "cpu" and torch.set_flush_denormal(True)  # as `dvae train` does
    try:
        run.fit()
    finally:
        if flush:
            torch.set_flush_denormal(False)
    if trainer.best_model is not None:
        trainer.model.load_state_dict(trainer.best_model)
    trainer.model.eval()
    return run
