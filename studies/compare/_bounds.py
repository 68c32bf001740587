"""What the exact, nonlinear and worldmodels sections share: fit a family under a CPU-time budget, then its bounds on
held-out sequences, per observed step in the data's original units.

Every figure here is a LOG-likelihood per observed step (nats, higher is better), moved to data units
by subtracting the standardisation's log-Jacobian ``Normalizer.log_det_per_step`` (as
``dvae.infer.evaluation.evaluate`` adds it to the NLL).
"""

from __future__ import annotations

import time
from typing import Dict, Sequence

import numpy as np
import pyro
import torch

from dvae.data import Normalizer
from dvae.data.batching import batches
from dvae.infer.elbo import elbo_terms, iw_bound
from dvae.infer.smc import evaluate_pf
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model
from studies.compare.budget import train_best


def prepare(data, norm: Normalizer, split: str):
    """(xs, us) of a split, standardised."""
    xs, us = data.subset(split)
    return norm.x(xs), norm.u(us)


def fit(family: str, data, norm: Normalizer, budget: float, seed: int, device: str = "cpu",
        epochs: int = 10_000, **train) -> tuple:
    """Train ``family`` with the project's default model and training settings (``train``: TrainConfig
    fields to override) for at most ``budget`` seconds of training CPU time of this process
    (:class:`studies.compare.budget.CpuBudget`: validation excluded; one torch thread makes it the
    time of one core), or ``epochs``, or until early stopping, keeping the best validation parameters.
    Returns (model, info) with ``budget_kind`` ("cpu"), ``train_cpu_seconds``, ``train_seconds`` (the
    wall seconds it took), ``epochs`` (with the part of an epoch the budget cut short), ``updates``, ``best_epoch``, ``stop_reason`` and ``lr`` (the
    learning rate used: the family's default unless ``train`` sets it)."""
    pyro.set_rng_seed(seed)
    model = build_model(ModelConfig(family, x_dim=data.x_dim, u_dim=data.u_dim)).to(device)
    trainer = Trainer(model, TrainConfig(epochs=epochs, time_limit=None, seed=seed, device=device, **train),
                      prepare(data, norm, "train"), prepare(data, norm, "valid"), norm.log_det_per_step)
    run = train_best(trainer, budget)  # the best-on-validation parameters, in eval mode
    return model, {"budget_kind": "cpu", "train_cpu_seconds": round(run.clock.used, 1),
                   "train_seconds": round(run.wall_seconds, 1), "epochs": round(run.epochs, 2),
                   "updates": run.updates, "best_epoch": trainer.state["best_epoch"], "stop_reason": run.stop_reason,
                   "lr": trainer.config.lr}


def budget_kind(m: dict) -> str:
    """How a stored row's training was limited: "cpu" (training CPU seconds of one thread, validation
    excluded) or "wall" (a wall-clock time limit, validation and diagnostics included: every row stored
    before budgets were CPU seconds)."""
    return m.get("budget_kind", "wall")


def budget_cell(m: dict, limit) -> str:
    """A table cell: the budget and its kind, e.g. "150 CPU s" or "150 wall s"."""
    if not isinstance(limit, (int, float)) or limit != limit:
        return "n/a"
    return f"{limit:g} {'CPU' if budget_kind(m) == 'cpu' else 'wall'} s"


def cpu_cell(m: dict):
    """The training CPU seconds of a row (a float), or "n/a" for a row stored with a wall-clock limit
    (its CPU time was not recorded)."""
    v = m.get("train_cpu_seconds")
    return float(v) if isinstance(v, (int, float)) else "n/a"


def stop_cell(m: dict, limit=None) -> str:
    """What ended a row's training: the budget, early stopping (the trainer's convergence test) or the
    epoch cap. A row stored before this was recorded (a wall-clock one) that trained for less than its
    ``limit`` stopped early; otherwise "not recorded"."""
    reason = m.get("stop_reason")
    if reason is None:
        t = m.get("train_seconds")
        if isinstance(limit, (int, float)) and isinstance(t, (int, float)) and t < 0.95 * limit:
            return "early stopping (before the limit)"
        return "not recorded"
    return {"cpu_budget": "budget", "time_limit": "budget", "converged": "early stopping",
            "epochs": "epoch cap"}.get(reason, str(reason))


EARLIER_DEFAULTS = {
    "fd336fa": "a constant learning rate of 0.01 for every family, no schedule, and early stopping after 20 epochs "
               "without a better validation bound",
}
"""The training defaults of the commits that stored wall-clock rows (read from ``TrainConfig`` at that
commit): what those rows were trained with."""


def earlier_defaults_note(commits) -> str:
    """The training defaults of the earlier ``commits`` that stored wall-clock rows, beside today's (empty
    for commits not in ``EARLIER_DEFAULTS``)."""
    known = sorted(c for c in commits if c in EARLIER_DEFAULTS)
    if not known:
        return ""
    t = TrainConfig()
    return (f"They also trained under that version's defaults ({'; '.join(f'commit {c}: ' + EARLIER_DEFAULTS[c] for c in known)}), "
            f"the other rows under today's: the {t.lr_schedule} schedule (the rate times {t.lr_factor:g} after "
            f"{t.lr_patience} epochs without a better validation bound, down to {t.min_lr:g}), then early "
            f"stopping after {t.patience} more, and each family's default rate (the lr recorded in the "
            "JSON). So the two kinds of rows differ in their training recipe as well as their budget.")


def budget_note(models: Sequence[dict]) -> str:
    """What the budget kinds of the rows ``models`` (per-family results, run now or carried) mean: said
    for the kinds present, with the load of the machine during the stored wall-clock runs."""
    kinds = {budget_kind(m) for m in models}
    out = []
    if "cpu" in kinds:
        out.append("Rows marked \"CPU s\" were trained for that many CPU seconds of their own process "
                   "(`time.process_time()`, one torch thread), validation excluded: a budget that does not depend "
                   "on the other jobs on the machine.")
    if "wall" in kinds:
        loads = sorted({v for m in models if budget_kind(m) == "wall"
                        for v in (m.get("run") or {}).get("load_average", []) if isinstance(v, (int, float))})
        dates = sorted({str((m.get("run") or {}).get("date")) for m in models if budget_kind(m) == "wall"})
        load = (f" at a 1-minute load average between {loads[0]:.1f} and {loads[-1]:.1f} (at the start and end of "
                "its section)") if loads else ""
        out.append(f"Rows marked \"wall s\" were trained under a wall-clock limit by an earlier version of the study "
                   f"(runs of {', '.join(dates)}) on the same two-core machine with one torch thread{load}: with about "
                   "a core to itself, the process's wall seconds were close to its CPU seconds, but each epoch's "
                   "validation and latent diagnostics counted inside the limit, so such a row had fewer training "
                   "seconds than the same CPU budget gives (how many fewer was not recorded, nor its CPU time).")
        out.append(earlier_defaults_note({str((m.get("run") or {}).get("commit")) for m in models
                                          if budget_kind(m) == "wall"}))
    return " ".join(o for o in out if o)


@torch.no_grad()
def bounds(model, xs, us, log_det: float, ks: Sequence[int], seed: int, batch_size: int = 64,
           chunk: int = 100) -> Dict[str, float]:
    """The ELBO (one draw, analytic KL) and the K-sample IW bounds of ``model`` on (standardised)
    sequences, per observed step in data units: ``{"elbo": .., "iw_K": .., "seconds_iw_K": ..}``.
    For an exact model (the LGSSM) the ELBO is the exact log-likelihood."""
    model_fn, guide_fn = model.programs(vectorized=True)
    pyro.set_rng_seed(seed)
    steps, elbo = 0, 0.0
    out: Dict[str, float] = {}
    for batch in batches(xs, us, batch_size, by_length=True):
        steps += int(batch.lengths.sum())
        elbo += elbo_terms(model_fn, guide_fn, batch.to(model.device))["elbo"].sum().item()
    out["elbo"] = elbo / steps - log_det
    if getattr(model, "exact", False):
        return out
    for k in ks:
        pyro.set_rng_seed(seed + k)
        t0, total = time.perf_counter(), 0.0
        for batch in batches(xs, us, batch_size, by_length=True):
            total += iw_bound(model_fn, guide_fn, batch.to(model.device), k, chunk=chunk).sum().item()
        out[f"iw_{k}"] = total / steps - log_det
        out[f"seconds_iw_{k}"] = round(time.perf_counter() - t0, 2)
    return out


@torch.no_grad()
def particle_filter(model, xs, us, log_det: float, particles: Sequence[int], seed: int,
                    batch_size: int = 64) -> Dict[str, float]:
    """The bootstrap particle filter with the model's learned networks, per observed step in data units:
    ``{"pf_P": .., "seconds_pf_P": ..}`` for each particle count P."""
    out: Dict[str, float] = {}
    for p in particles:
        pyro.set_rng_seed(seed + p)
        t0 = time.perf_counter()
        res = evaluate_pf(model, xs, us, p, log_det, batch_size=max(1, min(batch_size, 200_000 // p)))
        out[f"pf_{p}"] = -res["nll_pf_per_step"]
        out[f"seconds_pf_{p}"] = round(time.perf_counter() - t0, 2)
    return out


def finite(v) -> bool:
    return isinstance(v, float) and bool(np.isfinite(v))
