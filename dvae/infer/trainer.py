"""Training by stochastic variational inference: the loop, validation, fault recovery, checkpoints.

The trainer wraps ``pyro.infer.SVI`` (:class:`~dvae.infer.svi.ClippedSVI` adds a global gradient-norm
clip and skips non-finite updates). Each update maximises the per-step ELBO of a batch: model and guide
run under ``poutine.scale(1 / number of real steps)``, and the latent sites under the annealing factor.
Under torchrun, ``dvae.infer.distributed.DataParallelTrainer`` runs the same batches on every rank,
each on its share, with the same objective (docs/scaling.md). The KL is weighted by ``beta``
(``DynamicalELBO(beta=...)``). Batches come from :mod:`dvae.data.batching`; validation is
:func:`dvae.infer.evaluation.evaluate` on the program form the trainer trains (``TrainConfig.vectorized``).

Each epoch's metrics row holds the two terms of the objective apart (``train_recon_per_step``,
``train_kl_per_step``; ``valid_recon_per_step``, ``valid_kl_per_step``), and the latent diagnostics of
:mod:`dvae.infer.diagnostics` on the validation split (``valid_kl_per_dim``, ``active_units``,
``posterior_collapse``).

Its settings are :class:`~dvae.infer.train_config.TrainConfig` (importable from here, with the defaults);
KL annealing, the plateau learning-rate schedule and early stopping are :mod:`dvae.infer.schedule`;
the snapshots faults go back to are :mod:`dvae.infer.faults`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from typing import Callable, ContextManager, Dict, List, Optional

import numpy as np
import pyro
import pyro.optim
import torch
from pyro import poutine

from dvae.data.batch import ResidentSequences, collate
from dvae.data.batching import batch_indices, sequence_lengths
from dvae.infer import rng, schedule
from dvae.infer.diagnostics import epoch_diagnostics
from dvae.infer.elbo import elbo
from dvae.infer.evaluation import evaluate, missing_log_det
from dvae.infer.faults import TrainingDiverged, restore_snapshot, take_snapshot
from dvae.infer.objectives import make_objective
from dvae.infer.optim import make_adam
from dvae.infer.svi import ClippedSVI
# the settings and their defaults, importable from here as before
from dvae.infer.train_config import DEFAULT_EPOCHS, DEFAULT_LR, OTHER_LR, TrainConfig, default_lr  # noqa: F401

__all__ = ["Trainer", "TrainConfig", "TrainingDiverged", "DEFAULT_EPOCHS", "DEFAULT_LR", "OTHER_LR", "default_lr"]


class Trainer:
    """Fits a model by SVI on the per-step dynamical ELBO.

    ``state`` holds everything a resumed run needs (epoch, position inside the epoch, update count,
    best bound, the partial epoch's sums); :meth:`checkpoint` and :meth:`load_checkpoint` round-trip
    it with the parameters, the best parameters, the optimiser's state, the RNG state and the metrics
    rows, so that one file restores a run exactly.

    Faults: an update whose loss or gradient is not finite is skipped; the parameters and optimiser
    state go back to the last good snapshot (taken every ``snapshot_every`` good updates), the learning
    rate is multiplied by ``fault_lr_factor``, and training carries on; after ``max_fault_retries``
    faults it raises :class:`TrainingDiverged`.

    Stopping: :meth:`request_stop` (e.g. from a signal handler) makes :meth:`fit` return at the next
    update boundary with ``stopped=True``; a checkpoint taken then resumes mid-epoch exactly.

    Extending a run without subclassing: :meth:`fit` takes ``on_update`` (after every update, e.g. a
    budget that calls :meth:`request_stop`), ``on_validate`` (each epoch's validation bounds),
    ``evaluating`` (a context around each epoch's evaluation, e.g. a clock paused there) and
    ``diagnostics`` (False skips the per-epoch latent diagnostics); :meth:`validate` is the validation
    pass itself (``studies.compare.budget.CpuBudget`` is built on these alone).
    """

    snapshot_every = 20
    fault_lr_factor = 0.5
    max_fault_retries = 5

    def __init__(self, model, config: TrainConfig, train_data, valid_data, log_det_per_step: float = 0.0,
                 device=None, x_log_std=None):
        if config.lr is None:  # the family's default, recorded in the trainer's config
            config = dataclasses.replace(config, lr=getattr(model, "default_lr", OTHER_LR))
        self.model, self.config = model, config
        # pyro.module registers parameters by name: a store left by another model with the same names
        # would be optimised instead of this one's, silently. Start from a clean store.
        pyro.clear_param_store()
        self.train_xs, self.train_us, *train_cs = train_data  # (xs, us) or (xs, us, cs)
        self.valid_xs, self.valid_us, *valid_cs = valid_data
        self.train_cs = train_cs[0] if train_cs else None
        self.valid_cs = valid_cs[0] if valid_cs else None
        self.log_det = log_det_per_step
        self.x_log_std = x_log_std  # per-dimension log std: the log-Jacobian where entries are missing
        self.device = device or model.device
        c = config
        optim_args = {"lr": c.lr}
        if c.optimizer == "adam":
            self.optim = make_adam(optim_args, self.device)  # CUDA: one fused Adam over all parameters
        elif c.optimizer == "clipped_adam":
            self.optim = pyro.optim.ClippedAdam({**optim_args, "lrd": c.lr_decay, "clip_norm": 1e6})
        else:
            raise ValueError(f"unknown optimizer {c.optimizer!r} (choose adam or clipped_adam)")
        self.elbo = make_objective(c.objective, c.train_samples, free_bits=c.free_bits, beta=c.beta)
        self.svi = ClippedSVI(self._model, self._guide, self.optim, self.elbo, clip_norm=c.clip_norm)
        self.batches_per_epoch = max(1, math.ceil(len(self.train_xs) / c.batch_size))
        self.state = {"epoch": 0, "step": 0, "best_valid": math.inf, "best_epoch": 0, "since_best": 0,
                      "train_seconds": 0.0, "skipped_updates": 0, "faults": 0, "lr_scale": 1.0,
                      "batch_in_epoch": 0, "partial": self._new_partial(), "collapse_count": 0,
                      "collapse_warned": False, "lr_bad_epochs": 0, "floor_stale": 0, "lr_reductions": 0,
                      "plateau_start": 0, "stop_reason": None}
        self.rows: List[dict] = []
        self.best_model = None
        self.stopped = False
        self._stop_requested = False
        self._snapshot = None
        self._pending: Dict[str, torch.Tensor] = {}  # logged terms summed on the device, not yet read
        self._pending_updates = 0
        self._resident = None  # the training split on the device (_resident_split)

    @staticmethod
    def _new_partial() -> dict:
        """The sums of an epoch in progress (checkpointed, so an epoch resumed mid-way sums the same)."""
        return {"loss_sum": 0.0, "steps_sum": 0, "seconds": 0.0, "skipped": 0, "log_lik_sum": 0.0, "kl_sum": 0.0}

    # scaled programs: per-step ELBO of the batch, annealed KL; the vectorized or the per-step form
    def _model(self, batch, annealing_factor, scale):
        model = self.model.programs(vectorized=self.config.vectorized)[0]
        return poutine.scale(model, scale=scale)(batch, annealing_factor)

    def _guide(self, batch, annealing_factor, scale):
        guide = self.model.programs(vectorized=self.config.vectorized)[1]
        return poutine.scale(guide, scale=scale)(batch, annealing_factor)

    def annealing_factor(self, step: int) -> float:
        """The factor on the KL at update ``step`` (:func:`dvae.infer.schedule.annealing_factor`)."""
        return schedule.annealing_factor(self.config, step, self.batches_per_epoch)

    def request_stop(self) -> None:
        """Ask :meth:`fit` to return at the next update boundary (safe to call from a signal handler)."""
        self._stop_requested = True

    # --- faults -------------------------------------------------------------------------------------
    def _take_snapshot(self) -> None:
        self._snapshot = take_snapshot(self.model, self.optim)

    def _set_lr_scale(self, scale: float, relative: bool = False) -> None:
        """Set the learning rate to ``config.lr * scale``. ``relative``: multiply the live optimisers'
        rates by the change of scale instead of overwriting them, which keeps ClippedAdam's per-update
        decay (``--lr-decay``) already applied to them."""
        change = scale / self.state["lr_scale"]
        self.state["lr_scale"] = scale
        lr = self.config.lr * scale
        self.optim.pt_optim_args["lr"] = lr  # optimisers created later
        groups = {id(g): g for opt in self.optim.optim_objs.values() for g in opt.param_groups}  # a shared group once
        for group in groups.values():
            group["lr"] = group["lr"] * change if relative else lr

    # --- the learning-rate schedule (dvae.infer.schedule) ----------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate now: ``config.lr`` times the schedule's and the fault recovery's factors
        (ClippedAdam's per-update decay not included)."""
        return self.config.lr * self.state["lr_scale"]

    def _schedule_step(self, improved: bool) -> None:
        """After an epoch's validation: reduce on plateau, and count the epochs without improvement at
        the floor (what early stopping waits on). All of it lives in ``state`` (checkpointed)."""
        new_lr = schedule.schedule_step(self.state, self.config, self.lr, improved)
        if new_lr is not None:
            self._set_lr_scale(new_lr / self.config.lr, relative=True)  # relative: keeps ClippedAdam's decay

    def converged(self) -> bool:
        """Early stopping's test (:func:`dvae.infer.schedule.converged`): ``patience`` epochs without a
        better validation bound once the schedule has run out; never with ``patience`` 0."""
        return schedule.converged(self.state, self.config)

    def _recover(self) -> None:
        self.state["faults"] += 1
        if self.state["faults"] > self.max_fault_retries:
            raise TrainingDiverged(f"training diverged: {self.state['faults']} non-finite updates (loss or gradient); "
                                   f"the learning rate was lowered to {self.config.lr * self.state['lr_scale']:.3g}; "
                                   "the last checkpoint is kept")
        if self._snapshot is not None:
            restore_snapshot(self._snapshot, self.model, self.optim)
        self._set_lr_scale(self.state["lr_scale"] * self.fault_lr_factor, relative=True)  # the restored rates, lowered

    # --- the loop -----------------------------------------------------------------------------------
    def train_epoch(self, deadline: Optional[float] = None,
                    on_update: Optional[Callable[[float], None]] = None) -> Optional[Dict[str, float]]:
        """Train through the rest of the current epoch (the shuffle is a function of seed and epoch, so
        an epoch resumed at batch k sees the same batches). Returns the epoch's metrics, or None if it
        stopped early on request (the partial sums stay in ``state``). ``on_update(loss)``: see :meth:`fit`."""
        self.model.train()
        gen = torch.Generator().manual_seed(self.config.seed * 100003 + self.state["epoch"])
        acc = self.state["partial"]
        start = self.clock()
        t_last = start
        lengths = sequence_lengths(self.train_xs)
        chunks = batch_indices(lengths, self.config.batch_size, gen, self.config.bucket)  # as batches() draws them
        resident = self._resident_split()
        if resident is not None:  # this epoch's order moved once; each batch gathered on the device
            order = torch.tensor([i for idx in chunks for i in idx], device=self.device)
            starts = np.cumsum([0] + [len(idx) for idx in chunks]).tolist()
        for i, idx in enumerate(chunks):
            if i < self.state["batch_in_epoch"]:
                continue
            if self._stop_requested:
                self.stopped = True
                break
            if self._snapshot is None or self.state["step"] % self.snapshot_every == 0:
                self._take_snapshot()
            n = sum(lengths[j] for j in idx)  # real steps, from the host's lengths
            if resident is not None:
                batch = resident.batch(order[starts[i]:starts[i + 1]], max(lengths[j] for j in idx))
            else:
                xs = [self.train_xs[j] for j in idx]
                batch = collate([torch.from_numpy(x) for x in xs],
                                None if self.train_us is None else [torch.from_numpy(self.train_us[j]) for j in idx],
                                None if self.train_cs is None else [torch.as_tensor(self.train_cs[j]) for j in idx],
                                missing=any(np.isnan(x).any() for x in xs))  # looked up in numpy: no tensor read
                batch = batch.to_device(self.device)  # CUDA: pinned, non_blocking
            loss = self.svi.step(batch, self.annealing_factor(self.state["step"]), 1.0 / n)
            extra = 0.0
            if batch.obs_mask is not None:  # missing entries: their steps' log-Jacobian is smaller (read later)
                extra = missing_log_det(batch, self.log_det, self.x_log_std).sum()
            self._record_update(acc, loss, n, i, extra)
            if on_update is not None:
                on_update(loss)
            now = self.clock()
            acc["seconds"] += now - t_last
            t_last = now
            if deadline is not None and now > deadline:
                break
        self.state["train_seconds"] += self.clock() - start
        if self.stopped:
            return None
        return self._end_epoch(acc)

    clock = staticmethod(time.perf_counter)
    """The clock of ``time_limit``, ``train_seconds`` and the epochs' seconds (wall seconds). A benchmark may
    set ``time.process_time`` to count the training process's CPU seconds instead (bench/bench_plan.py)."""

    resident_data: Optional[bool] = None
    """Hold the training split on the device once (:class:`dvae.data.batch.ResidentSequences`) instead of
    moving every batch there: None (default) on CUDA for data held in memory without missing entries
    and at most :attr:`resident_max_bytes`; True/False to force it (True still needs such data)."""
    resident_max_bytes = 2 ** 30

    def _resident_split(self):
        """The training split on the device, built at the first call; None where batches are collated on
        the host and moved one by one (lazily read data, missing entries, too large, or on CPU)."""
        if self._resident is None:
            self._resident = False
            want = self.resident_data if self.resident_data is not None else self.device.type == "cuda"
            if want and ResidentSequences.holds(self.train_xs, self.train_us, self.resident_max_bytes):
                self._resident = ResidentSequences(self.train_xs, self.train_us, self.train_cs, self.device)
        return self._resident or None

    def _record_update(self, acc: dict, loss: float, num_steps: int, batch_index: int, extra_loss=0.0):
        """Book one update into the epoch's sums (a skipped one: restore and count it), then advance the
        update count and the position inside the epoch. ``extra_loss``: added to the loss sum (the
        log-Jacobian difference of steps with missing entries; a device tensor is summed on the device
        with the logged terms, :meth:`_add_terms`)."""
        if math.isnan(loss):
            acc["skipped"] += 1
            self._recover()
        else:
            acc["loss_sum"] += loss * num_steps
            if torch.is_tensor(extra_loss):
                self._pending["extra_loss"] = self._pending.get("extra_loss", 0.0) + extra_loss.to(torch.float64)
            else:
                acc["loss_sum"] += extra_loss
            acc["steps_sum"] += num_steps
            self._add_terms(acc)
        self.state["step"] += 1
        self.state["batch_in_epoch"] = batch_index + 1

    log_every = 50
    """The logged terms of the updates are summed on the device and read (one host-device sync) every
    ``log_every`` updates, at the end of an epoch and at a checkpoint."""

    def _add_terms(self, acc: dict) -> None:
        """Add the last update's plain terms (``DynamicalELBO.last_term_tensors``, device tensors) to the
        epoch's sums: summed on the device, read into ``acc`` every :attr:`log_every` updates."""
        for key, value in self.elbo.last_term_tensors.items():
            self._pending[key] = self._pending.get(key, 0.0) + value.to(torch.float64)
        self._pending_updates += 1
        if self._pending_updates >= self.log_every:
            self._flush_terms(acc)

    def _flush_terms(self, acc: Optional[dict] = None) -> None:
        """Read the terms summed on the device into the epoch's sums (``state["partial"]``)."""
        acc = self.state["partial"] if acc is None else acc
        pending, self._pending, self._pending_updates = self._pending, {}, 0
        acc["log_lik_sum"] = acc.get("log_lik_sum", 0.0) + float(pending.get("log_lik", 0.0))
        acc["kl_sum"] = acc.get("kl_sum", 0.0) + float(pending.get("kl", 0.0))
        acc["loss_sum"] += float(pending.get("extra_loss", 0.0))

    def _term_sums(self, acc: dict):
        """(sum of log p(x_t | z_t), sum of KL) of the epoch (a data-parallel trainer sums the ranks')."""
        return acc.get("log_lik_sum", 0.0), acc.get("kl_sum", 0.0)

    def _end_epoch(self, acc: dict) -> Dict[str, float]:
        """Close an epoch: reset the partial sums, return its metrics row."""
        self._flush_terms(acc)
        self.state["batch_in_epoch"] = 0
        self.state["partial"] = self._new_partial()
        self.state["skipped_updates"] += acc["skipped"]
        steps = acc["steps_sum"]
        train_loss = acc["loss_sum"] / steps + self.log_det if steps else math.nan
        # the two terms apart, per observed step: the reconstruction in data units, the KL unweighted
        # (no annealing, beta or free bits); -elbo(recon, kl) is the training bound of the epoch
        log_lik, kl = self._term_sums(acc)
        recon, kl = (log_lik / steps, kl / steps) if steps else (math.nan, math.nan)
        return {"train_loss": train_loss, "train_recon_per_step": -recon + self.log_det, "train_kl_per_step": kl,
                "train_neg_elbo_per_step": -elbo(recon, kl) + self.log_det if steps else math.nan,
                "epoch_seconds": acc["seconds"],
                "annealing_factor": self.annealing_factor(self.state["step"]), "skipped_updates": acc["skipped"],
                "lr": self.lr}

    def fit(self, on_epoch: Optional[Callable[[dict, bool], None]] = None, progress: bool = True, *,
            on_update: Optional[Callable[[float], None]] = None,
            on_validate: Optional[Callable[[dict], None]] = None,
            evaluating: Optional[Callable[[], ContextManager]] = None, diagnostics: bool = True) -> List[dict]:
        """Train until ``epochs`` (total; None: no cap), the time limit, convergence or :meth:`request_stop`.
        ``on_epoch(row, improved)`` runs after every epoch (write checkpoints there). Returns all rows.

        The other hooks, for budgets and curves (a run with them trains as one without, unless they stop it):

        - ``on_update(loss)``: after every update is booked (``state["step"]`` counts it), with its per-step
          loss (NaN for a skipped one); may call :meth:`request_stop`, which takes effect before the next.
        - ``on_validate(out)``: after each epoch's validation, with :meth:`validate`'s bounds.
        - ``evaluating``: a function returning a context manager, entered around each epoch's evaluation
          (:meth:`validate`, ``on_validate`` and the diagnostics), e.g. a training clock paused there.
        - ``diagnostics``: False skips the per-epoch latent diagnostics (the rows then lack their keys:
          ``valid_kl_per_dim``, ``active_units``, ``posterior_mean_var``, ``posterior_collapse``). They draw
          under their own random stream, so the training is the same either way.

        After each epoch's validation the learning-rate schedule steps (:meth:`_schedule_step`; the rate
        an epoch trained at is its row's ``lr``). Convergence (:meth:`converged`: the schedule run out,
        then ``patience`` epochs without improvement) ends training with the best parameters restored
        into the model. ``state["stop_reason"]`` says what ended it: epochs, time_limit, converged or
        interrupted."""
        from tqdm.auto import tqdm

        c = self.config
        t0 = self.clock()
        budget = None if c.time_limit is None else c.time_limit - self.state["train_seconds"]
        deadline = None if budget is None else t0 + budget
        bar = tqdm(total=c.epochs, initial=self.state["epoch"], desc="train", unit="epoch", disable=not progress,
                   dynamic_ncols=True, leave=False)
        reason = None
        while reason is None:
            if c.epochs is not None and self.state["epoch"] >= c.epochs:
                reason = "epochs"
            elif deadline is not None and self._agree(self.clock() >= deadline):
                reason = "time_limit"
            elif self.converged():
                reason = "converged"
            if reason is not None:
                break
            row = self.train_epoch(deadline, on_update)
            if row is None:
                reason = "interrupted"
                break
            self.state["epoch"] += 1
            with (evaluating or contextlib.nullcontext)():
                valid = self.validate()
                if on_validate is not None:
                    on_validate(valid)
                row = {"epoch": self.state["epoch"], **row, "valid_neg_elbo_per_step": valid["neg_elbo_per_step"],
                       "valid_recon_per_step": valid["recon_per_step"], "valid_kl_per_step": valid["kl_per_step"]}
                if diagnostics:
                    row.update(self._diagnostics(valid["kl_per_step"]))
            improved = valid["neg_elbo_per_step"] < self.state["best_valid"]
            if improved:
                self.state.update(best_valid=valid["neg_elbo_per_step"], best_epoch=self.state["epoch"], since_best=0)
                self.best_model = copy.deepcopy(self.model.state_dict())
            else:
                self.state["since_best"] += 1
            self._schedule_step(improved)
            self.rows.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", valid=f"{row['valid_neg_elbo_per_step']:.3f}")
            if on_epoch is not None:
                on_epoch(row, improved)
        bar.close()
        self.state["stop_reason"] = reason
        if reason == "converged" and self.best_model is not None:
            self.model.load_state_dict(self.best_model)
        return self.rows

    def validate(self) -> Dict[str, float]:
        """The validation split's per-step bounds (:func:`dvae.infer.evaluation.evaluate`'s dict:
        ``neg_elbo_per_step``, ``recon_per_step``, ``kl_per_step``, ...), scored by the program form training
        runs (the vectorized one by default: the same ELBO as the per-step one, fewer sites and host reads);
        a data-parallel trainer reduces them across ranks (every rank calls it). :meth:`fit` calls it after
        every epoch. It draws from the training's random stream (the diagnostics do not): a call at another
        point than :meth:`fit`'s changes the draws that follow."""
        return evaluate(self.model, self.valid_xs, self.valid_us, self.log_det, self.config.eval_batch_size,
                        device=self.device, cs=self.valid_cs, x_log_std=self.x_log_std,
                        vectorized=self.config.vectorized)

    def _agree(self, flag: bool) -> bool:
        """A decision every process takes together (a data-parallel trainer: true if any rank's is)."""
        return flag

    def _diagnostics(self, kl_per_step: float) -> dict:
        """KL per latent dimension and active units on the validation split, and the collapse check
        (:func:`dvae.infer.diagnostics.epoch_diagnostics`: warns once per run)."""
        return epoch_diagnostics(self.model, (self.valid_xs, self.valid_us, self.valid_cs), kl_per_step,
                                 self.config, self.state, self.device)

    # --- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """Everything to resume: parameters, best parameters, optimiser state, trainer state, RNG state
        and metrics rows (tensors and plain containers, loadable with ``torch.load(weights_only=True)``)."""
        self._flush_terms()
        return {"model": self.model.state_dict(), "best_model": self.best_model, "optim": self.optim.get_state(),
                "state": copy.deepcopy(self.state), **rng.capture(), "rows": list(self.rows)}

    def load_checkpoint(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.best_model = ckpt.get("best_model")
        self.optim.set_state(ckpt["optim"])
        self.state.update(ckpt["state"])
        self._set_lr_scale(self.state["lr_scale"])
        self.rows = list(ckpt.get("rows", []))
        rng.restore(ckpt)  # the CPU and (where used) CUDA random states
