"""Training a run: what ``dvae train`` and ``dvae.fit`` share.

:func:`train` takes the train verb's settings (``a``: its flags by their names with underscores, an
``argparse.Namespace`` or anything with those attributes; :func:`train_options` builds one from
keyword arguments and checks them) and optionally data already in memory, builds the model and its
``RunConfig`` (or reads them back with ``a.resume``), trains, and, where a run directory is named,
writes it as the command line always has: ``config.json`` first, ``checkpoint.pt`` from the first
moment, ``metrics.jsonl`` and ``best.pt`` after every epoch, the plots at the end.
It returns a :class:`TrainResult`: the summary (the JSON ``dvae train`` prints), the model with its
BEST parameters, the config, the data and the trainer. A stop asked for by a signal raises
:class:`Interrupted` with the summary. Without a run directory (``dvae.fit(..., out=None)``) nothing
is written.

The parts, each in a module of its job (their names importable from here): the settings as keyword
arguments (:mod:`dvae.train_options`), the start of a new or resumed run and its data
(:mod:`dvae.run_start`), and the files training derives, metrics, best.pt and plots
(:mod:`dvae.run_files`).
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

# the parts of a run's training, each in the module of its job; their names importable from here as before
from dvae.run_files import (ARRAYS_SOURCE, DATA_FILE, save_arrays, trajectory_arrays,  # noqa: F401
                            write_derived, write_train_plots)
from dvae.run_start import (check_dims, check_new_run, default_run_dir, new_run_config,  # noqa: F401
                            open_run, prepare, refuse_problem, train_configs)
from dvae.train_options import CHOICES, TRAIN_OPTIONS, choices, train_options  # noqa: F401


class Interrupted(Exception):
    """Training stopped on a signal (SIGINT, SIGTERM) after writing a checkpoint; ``summary`` is the
    train summary so far (``interrupted``: true)."""

    def __init__(self, summary: Optional[dict]):
        super().__init__("training interrupted" + ("" if summary is None else f" after epoch {summary['epochs']}"))
        self.summary = summary


@dataclass
class TrainResult:
    summary: Optional[dict]
    """The train summary (the JSON ``dvae train`` prints); None on a data-parallel rank other than 0."""
    model: Any
    """The model, holding the BEST parameters (as ``best.pt``)."""
    config: Any
    """The run's ``RunConfig``."""
    data: Any
    """The ``SequenceData`` it was trained on."""
    trainer: Any
    """The ``Trainer``: ``rows`` (the metrics), ``checkpoint()``."""
    checkpoint: Optional[dict] = None
    """Without a run directory: what checkpoint.pt would hold at the end (the last parameters, the
    optimiser, the trainer's state), so that ``Run.save`` writes a resumable run."""


def train(a, data=None, signals: bool = False) -> TrainResult:
    """Train a new run (``a.resume`` None) or resume one (``a.resume`` a run directory), as ``dvae
    train`` does. ``data``: a ``SequenceData`` already loaded (default: read from ``a.data``); data of
    ``source`` ``<arrays>`` is written into the run directory as ``data.npz``, its source from then on.
    ``a.out``: the run directory, or None to write nothing. ``signals``: SIGINT and SIGTERM ask for a
    stop after the current update (a second one stops at once), which raises :class:`Interrupted`.
    Under torchrun (WORLD_SIZE > 1) this is one rank of a data-parallel run
    (``dvae.infer.distributed``): every rank reads the config and the data, rank 0 alone writes.

    The run directory (``dvae.rundir``): every setting and the data are checked before anything is
    written; a new run appears at once with its config.json and first checkpoint.pt (made in a hidden
    sibling, then renamed), refusing an existing run or any other non-empty directory; the run's lock is
    held while it trains (a second train or --resume of it is refused); the data's fingerprint is
    recorded in config.json and checked on --resume (``a.data`` with --resume: the run's data from a
    new place, recorded)."""
    import torch

    from dvae.infer.distributed import shutdown
    from dvae.device import resolve_device
    from dvae.rundir import RunLock

    config, data, run_dir, parallel = open_run(a, data, getattr(a, "dist_timeout", None))
    device = resolve_device(config.train.device) if parallel is None else parallel.device
    # ReLU-RNN gradients decaying into denormals slow CPU training (docs/performance.md); the flag is
    # process-wide, so it is switched off again when training returns
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    lock = RunLock()  # taken in _train: by the new run's start, or before the resumed run's checkpoint is read
    try:
        return _train(a, config, data, run_dir, device, parallel, signals, lock)
    finally:
        lock.release()
        if flush:
            torch.set_flush_denormal(False)
        shutdown(parallel)


@contextmanager
def _stop_on_signals(trainer, enabled: bool, signalled: list):
    """SIGINT/SIGTERM ask ``trainer`` to stop after the current update; a second one stops at once
    (KeyboardInterrupt). Each signal is appended to ``signalled``."""
    if not enabled:
        yield
        return

    def on_signal(signum, frame):
        if signalled:  # a second signal: stop now (the last checkpoint stands)
            raise KeyboardInterrupt
        signalled.append(signum)
        print(f"dvae train: {signal.Signals(signum).name} received: stopping after this update and "
              "writing a checkpoint (send again to stop at once)", file=sys.stderr, flush=True)
        trainer.request_stop()

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def _train(a, config, data, run_dir, device, parallel=None, signals: bool = False, lock=None) -> TrainResult:
    import pyro

    from dvae.checkpoint import load_training
    from dvae.infer.diagnostics import PosteriorCollapseWarning
    from dvae.infer.trainer import Trainer
    from dvae.models import build_model
    from dvae.rundir import RunLock
    from dvae.run import CHECKPOINT, create_run, save_torch, write_config

    normalizer = config.normalizer
    main_rank = parallel is None or parallel.is_main  # the one process that writes files and prints
    writes = run_dir is not None and main_rank
    pyro.set_rng_seed(config.train.seed)
    model = build_model(config.model).to(device)
    c_dim = config.model.c_dim
    train_data, valid_data = prepare(data, normalizer, "train", c_dim), prepare(data, normalizer, "valid", c_dim)
    if parallel is None:
        trainer = Trainer(model, config.train, train_data, valid_data, normalizer.log_det_per_step, device,
                          x_log_std=normalizer.log_std)
    else:
        from dvae.infer.distributed import DataParallelTrainer

        if c_dim:
            raise ValueError("conditional models (--condition) do not train under torchrun yet")
        trainer = DataParallelTrainer(model, config.train, train_data, valid_data, normalizer.log_det_per_step,
                                      device, env=parallel, x_log_std=normalizer.log_std)
    ckpt_path = None if run_dir is None else os.path.join(run_dir, CHECKPOINT)

    def save_checkpoint():
        if run_dir is None:
            return
        ckpt = trainer.checkpoint()  # data-parallel: a collective, on every rank
        if main_rank:
            save_torch(ckpt_path, ckpt)

    lock = RunLock() if lock is None else lock
    if a.resume:
        if main_rank:
            lock.acquire(run_dir)  # held until training returns: a second process is refused
            if getattr(a, "data", None) is not None:
                write_config(run_dir, config)  # the data's new place and fingerprint
        # Adam's step counters stay on the CPU (moments move); every field checked before it is used
        ckpt = load_training(ckpt_path, "cpu", trainer.batches_per_epoch, config.train.optimizer, model.state_dict())
        trainer.load_checkpoint(ckpt)
        if main_rank:
            write_derived(run_dir, trainer)  # repair metrics.jsonl and best.pt after a kill at any moment
    elif run_dir is not None:  # config.json and the first checkpoint appear at once: from then on, it resumes
        ckpt = trainer.checkpoint()  # data-parallel: a collective, on every rank
        if main_rank:
            files = {}
            if config.data.source == ARRAYS_SOURCE:  # the run directory holds its own data: `dvae eval RUN` reads it
                config.data.source = os.path.abspath(os.path.join(run_dir, DATA_FILE))
                files[DATA_FILE] = lambda f: np.savez(f, **trajectory_arrays(data))
            create_run(run_dir, config, ckpt, lock, files)
            if DATA_FILE in files:  # fingerprinted where it now lies, recorded in config.json
                from dvae.run import record_data

                config.data = record_data(config.data)
                write_config(run_dir, config)

    collapse_told = [trainer.state.get("collapse_warned", False)]

    def on_epoch(row, improved):
        save_checkpoint()  # the one file that restores the run, written first
        if not main_rank:
            return
        if writes:
            write_derived(run_dir, trainer, best=improved)
        if row.get("posterior_collapse") and not collapse_told[0]:  # once per run; the Python warning is muted
            collapse_told[0] = True
            print(f"dvae train: warning: posterior collapse at epoch {row['epoch']}: the validation KL per step "
                  f"has stayed below {config.train.collapse_kl} nats for {config.train.collapse_epochs} epochs "
                  f"({row['valid_kl_per_step']:.3g} now, {row['active_units']} active units): the latent code is "
                  "ignored (try --free-bits, --anneal-epochs, --beta < 1)", file=sys.stderr, flush=True)
        if not sys.stderr.isatty() and not a.no_progress:
            print(f"epoch {row['epoch']}: train_loss {row['train_loss']:.4f}  valid -elbo/step "
                  f"{row['valid_neg_elbo_per_step']:.4f}  ({row['epoch_seconds']:.1f}s)", file=sys.stderr, flush=True)

    # held until the summary: a signal after the last epoch (while the plots are drawn) still ends with
    # the summary, and a second one stops at once, also with the summary (the last checkpoint stands)
    signalled, plots, last = [], [], None
    try:
        with _stop_on_signals(trainer, signals, signalled):
            with warnings.catch_warnings():  # on_epoch says it in one line instead
                warnings.simplefilter("ignore", PosteriorCollapseWarning)
                trainer.fit(on_epoch, progress=main_rank and not a.no_progress and sys.stderr.isatty())
            if trainer.stopped:
                save_checkpoint()
            elif main_rank and trainer.best_model is not None and not signalled:
                last = None if run_dir is not None else copy.deepcopy(trainer.checkpoint())
                model.load_state_dict(trainer.best_model)
                if run_dir is not None and not getattr(a, "no_plots", False):
                    plots = write_train_plots(run_dir, model, config, data, normalizer, trainer.rows, stop=signalled)
    except KeyboardInterrupt:
        if not signals:
            raise
        signalled.append(signal.SIGINT)
    interrupted = trainer.stopped or bool(signalled)
    summary = {"run_dir": run_dir, "model": config.model.model, "data": config.data.source,
               "epochs": trainer.state["epoch"], "best_epoch": trainer.state["best_epoch"],
               "best_valid_neg_elbo_per_step": trainer.state["best_valid"],
               "train_seconds": trainer.state["train_seconds"], "skipped_updates": trainer.state["skipped_updates"],
               "faults": trainer.state["faults"], "interrupted": interrupted}
    if parallel is not None:
        summary["world_size"] = parallel.world_size
    if interrupted:
        raise Interrupted({**summary, "plots": plots} if main_rank else None)
    if trainer.best_model is None:
        from dvae.errors import DvaeError

        raise DvaeError("no epoch completed (is the time limit too short?)")
    if not main_rank:
        return TrainResult(None, model, config, data, trainer)  # rank 0 writes the plots and prints the summary
    if run_dir is not None:
        summary["plots"] = plots
    return TrainResult(summary, model, config, data, trainer, last)
