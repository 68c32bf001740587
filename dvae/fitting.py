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
"""

from __future__ import annotations

import copy
import difflib
import os
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np

from dvae.errors import DataError

ARRAYS_SOURCE = "<arrays>"
"""The ``source`` of data handed over as arrays; a run directory gets them as ``data.npz``."""

DATA_FILE = "data.npz"
"""The file in a run directory that holds data handed over as arrays (its ``config.data.source``)."""


TRAIN_OPTIONS = {
    # data
    "missing": "none", "tokens": "words", "min_count": 1, "episodes": 128, "steps": 64,
    # training
    "epochs": None, "time_limit": None, "batch_size": 16, "lr": None, "optimizer": "adam", "lr_decay": 1.0,
    "clip_norm": 10.0, "kl_start": 0.1, "anneal_epochs": 5.0, "free_bits": 0.0, "beta": 1.0,
    "collapse_kl": 0.01, "collapse_epochs": 3, "patience": 10, "per_step": False, "no_bucket": False,
    "device": "auto", "seed": 0, "lr_schedule": "plateau", "lr_factor": 0.5, "lr_patience": 3, "min_lr": 1e-4,
    "objective": "elbo", "train_samples": 1,
    # model
    "z_dim": 16, "rnn_dim": 64, "rnn_type": "gru", "transition_dim": 64, "emission_dim": 64, "guide": "dks",
    "num_iafs": None, "iaf_dim": 50, "bidirectional": False, "condition": False, "kl_balance": 0.0,
    "emission_scale": "constant", "vrae_decoder": "controls", "rvae_noncausal": False,
    # output
    "no_progress": False, "no_plots": False, "dist_timeout": None,
}
"""The ``dvae train`` flags (besides --model, --data, --out, --resume, --debug) by their names with
underscores, with the command line's defaults (tests/api checks them against its parser)."""

CHOICES = {"missing": ("none", "nan"), "tokens": ("words", "chars"), "rnn_type": ("gru", "lstm", "rnn"),
           "optimizer": ("adam", "clipped_adam"), "device": ("auto", "cpu", "cuda"),
           "emission_scale": ("constant", "state"), "vrae_decoder": ("controls", "feedback"),
           "lr_schedule": ("plateau", "none"), "objective": ("elbo", "iwae")}
"""The choices of the flags that have fixed ones; ``model`` and ``guide`` come from the families
(:func:`choices`)."""


def choices() -> dict:
    """Every flag with choices: :data:`CHOICES`, the model families and every guide a family takes."""
    from dvae.models import MODELS, all_guides

    return {**CHOICES, "model": tuple(MODELS), "guide": tuple(all_guides())}
_FLOAT_OPTIONS = {"time_limit", "lr", "lr_decay", "clip_norm", "kl_start", "anneal_epochs", "free_bits", "beta",
                  "collapse_kl", "dist_timeout"}


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


def train_options(model: str = "dmm", data: str = "pendulum", out: Optional[str] = None, **options) -> SimpleNamespace:
    """The train verb's settings from keyword arguments: ``options`` are its flags by their names with
    underscores (:data:`TRAIN_OPTIONS`). An unknown name, a value outside a flag's choices or of the
    wrong type raises ValueError naming it."""
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, list(TRAIN_OPTIONS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; the options are {', '.join(TRAIN_OPTIONS)}"
        raise ValueError(f"unknown option {name!r} (the `dvae train` flags with underscores){hint}")
    a = SimpleNamespace(**{**TRAIN_OPTIONS, **options}, model=model, data=data, out=out, resume=None, debug=False)
    allowed = choices()
    for name, value in vars(a).items():
        if name in allowed and value not in allowed[name]:
            raise ValueError(f"{name} = {value!r}: expected one of {', '.join(allowed[name])}")
        default = TRAIN_OPTIONS.get(name, "")
        if isinstance(default, bool) or name in ("per_step", "no_bucket", "bidirectional", "condition"):
            ok = isinstance(value, (bool, np.bool_))
            want = "a bool"
        elif name in _FLOAT_OPTIONS:
            ok = (value is None and default is None) or (isinstance(value, (int, float, np.integer, np.floating))
                                                         and not isinstance(value, bool))
            want = "a number" + (" or None" if default is None else "")
        elif isinstance(default, int) or name in ("epochs", "num_iafs"):
            ok = (value is None and default is None) or (isinstance(value, (int, np.integer))
                                                         and not isinstance(value, bool))
            want = "an int" + (" or None" if default is None else "")
        else:
            continue
        if not ok:
            raise ValueError(f"{name} = {value!r}: expected {want}, got {type(value).__name__}")
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            setattr(a, name, value.item())
    return a


# --- the configs of a new run ------------------------------------------------------------------------
def prepare(data, normalizer, split, c_dim: int = 0):
    """(xs, us) of a split, normalised; with ``c_dim``, (xs, us, cs) for a conditional model."""
    xs, us = data.subset(split)
    if c_dim:
        return normalizer.x(xs), normalizer.u(us), data.conditions(split, c_dim)
    return normalizer.x(xs), normalizer.u(us)


def train_configs(a, data):
    """The ModelConfig and TrainConfig of a new run from the train settings ``a`` and its loaded
    ``data`` (bench/bench_quality.py builds its runs of the defaults with this too)."""
    from dvae.infer.trainer import DEFAULT_EPOCHS, TrainConfig, default_lr
    from dvae.models import ModelConfig

    likelihood = {"binary": "bernoulli", "categorical": "categorical"}.get(data.kind, "gaussian")
    model = ModelConfig(model=a.model, x_dim=data.x_dim, u_dim=data.u_dim, z_dim=a.z_dim, rnn_dim=a.rnn_dim,
                        rnn_type=a.rnn_type, transition_dim=a.transition_dim, emission_dim=a.emission_dim,
                        guide=a.guide, bidirectional=a.bidirectional, kl_balance=a.kl_balance,
                        emission_scale=a.emission_scale, vrae_decoder=a.vrae_decoder, rvae_causal=not a.rvae_noncausal,
                        num_iafs=(a.num_iafs or 1) if a.guide == "iaf" else 0, iaf_dim=a.iaf_dim,
                        c_dim=data.c_dim if a.condition else 0,
                        likelihood=likelihood, missing=a.missing == "nan",
                        # frames: the conv DMM (other families read frames as vectors)
                        frame_shape=data.meta.get("frame_shape") if a.model == "dmm" else None)
    epochs = a.epochs if a.epochs is not None else (None if a.time_limit is not None else DEFAULT_EPOCHS)
    train = TrainConfig(epochs=epochs, time_limit=a.time_limit, batch_size=a.batch_size,
                        lr=a.lr if a.lr is not None else default_lr(a.model), optimizer=a.optimizer, lr_decay=a.lr_decay, clip_norm=a.clip_norm, kl_start=a.kl_start,
                        anneal_epochs=a.anneal_epochs, free_bits=a.free_bits, beta=a.beta,
                        collapse_kl=a.collapse_kl, collapse_epochs=a.collapse_epochs, patience=a.patience,
                        seed=a.seed, device=a.device, vectorized=not a.per_step, bucket=not a.no_bucket,
                        lr_schedule=a.lr_schedule, lr_factor=a.lr_factor, lr_patience=a.lr_patience, min_lr=a.min_lr,
                        objective=a.objective, train_samples=a.train_samples)
    return model, train


def check_new_run(a) -> None:
    """The checks of a new run's settings that need no data."""
    if a.epochs is not None and a.epochs < 1:
        raise ValueError("--epochs must be at least 1")
    from dvae.models import MODELS, ModelConfig

    family = MODELS[a.model]
    if (a.bidirectional and not family.bidirectional_encoder) or (a.condition and not family.conditional):
        both = " and ".join(n for n, c in MODELS.items() if c.bidirectional_encoder and c.conditional)
        raise ValueError(f"--bidirectional and --condition are for {both}, not {a.model}")
    if a.min_count < 1:
        raise ValueError("--min-count must be at least 1")
    owners = [n.upper() for n, c in MODELS.items() if a.guide in c.guides]
    if a.guide != ModelConfig.guide and a.guide not in family.guides:
        raise ValueError(f"--guide {a.guide} is a {' or '.join(owners)} guide, not a guide of {a.model} "
                         f"({'its guides: ' + ', '.join(family.guides) if family.guides else 'it has one guide'})")
    if a.guide == "ltr" and a.bidirectional:
        raise ValueError("--guide ltr is the filtering guide (a forward RNN): it takes no --bidirectional")
    if a.num_iafs is not None and (a.guide != "iaf" or a.num_iafs < 1):
        raise ValueError("--num-iafs takes a number >= 1, with --guide iaf")
    if a.iaf_dim < 1:
        raise ValueError("--iaf-dim must be at least 1")


def new_run_config(a, data):
    """The RunConfig of a new run on ``data`` (its normaliser fitted on the training split), checked as
    a reloaded config.json is; a problem raises ValueError said as the flag."""
    from dvae.data import Normalizer
    from dvae.run import DataConfig, RunConfig

    if a.condition and data.cs is None:
        raise DataError(f"{data.source}: --condition needs a per-sequence 'cond' (N, c_dim) or 'labels' (N,) "
                        "array in the .npz")
    config = RunConfig(data=DataConfig(source=a.data, episodes=a.episodes, steps=a.steps, data_seed=a.seed,
                                       missing=a.missing, tokens=a.tokens, min_count=a.min_count))
    train_xs, train_us = data.subset("train")
    normalizer = Normalizer.fit(train_xs, train_us, standardize=data.kind == "continuous")
    config.normalizer, config.kind, config.vocab = normalizer, data.kind, data.vocab
    config.model, config.train = train_configs(a, data)
    problem = config.problem()  # the checks a reloaded config.json gets, before anything is written
    if problem:
        key, _, rest = problem.partition(" = ")  # 'section.key = value: why', said as the flag
        if rest and key.startswith(("train.", "model.")):
            problem = f"--{key.split('.', 1)[1].replace('_', '-')} = {rest}"
        raise ValueError(problem)
    return config


def save_arrays(path: str, data) -> None:
    """Write in-memory trajectory data as a trajectory .npz that :func:`dvae.data.load_npz` reads back
    to the same sequences: ``obs`` (N, T+1, x_dim) padded, ``actions`` (N, T, u_dim), ``lengths``, the
    conditions as ``cond``, and the scalar metadata."""
    from dvae.files import atomic_write

    atomic_write(path, lambda f: np.savez(f, **trajectory_arrays(data)))


def trajectory_arrays(data) -> dict:
    """The arrays :func:`save_arrays` writes."""
    N, L = len(data.xs), max(len(x) for x in data.xs)
    obs = np.zeros((N, L, data.x_dim), np.float32)  # (N, T+1, x_dim); padding repeats nothing, masked by lengths
    for i, x in enumerate(data.xs):
        obs[i, :len(x)] = x
    arrays = {"obs": obs, "lengths": np.array([len(x) - 1 for x in data.xs], np.int64)}
    if data.us is not None:
        actions = np.zeros((N, L - 1, data.u_dim), np.float32)  # (N, T, u_dim): the last control of each is unused
        for i, u in enumerate(data.us):
            actions[i, :len(u) - 1] = u[:-1]
        arrays["actions"] = actions
    if data.cs is not None:
        arrays["cond"] = np.asarray(data.cs, np.float32)
    if data.meta.get("frame_shape") is not None:
        arrays["frame_shape"] = np.asarray(data.meta["frame_shape"], np.int64)
    for k, v in data.meta.items():
        if k not in arrays and isinstance(v, (int, float, str, bool)) and k not in ("num_actions", "num_labels"):
            arrays[k] = np.array(v)
    return arrays


# --- training ----------------------------------------------------------------------------------------
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

    from dvae.infer.distributed import DEFAULT_TIMEOUT, init_from_env, shutdown
    from dvae.device import resolve_device
    from dvae.rundir import RunLock, check_new_run_dir
    from dvae.run import DataConfig, RunConfig, absolute_source, load_data, read_config, record_data

    timeout = getattr(a, "dist_timeout", None) or DEFAULT_TIMEOUT
    if a.resume:
        run_dir = a.resume
        config = read_config(run_dir)
        if a.epochs is not None:
            config.train.epochs = a.epochs
        if a.time_limit is not None:
            config.train.time_limit = a.time_limit
        _refuse_problem(config)
        resolve_device(config.train.device)  # before anything is read or written
        parallel = init_from_env(config.train.device, timeout)
        moved = getattr(a, "data", None)
        data = load_data(config, None if moved is None else absolute_source(moved))
        if moved is not None:  # the run goes on with its data from here: recorded in config.json
            _check_dims(data, config)
            config.data = record_data(replace(config.data, source=moved))
    else:
        check_new_run(a)
        run_dir = a.out
        if run_dir is not None:
            check_new_run_dir(run_dir)  # a run, or any other non-empty directory, is refused
        resolve_device(a.device)
        # every rank has checked the run directory before joining; rank 0 creates it with the first checkpoint
        parallel = init_from_env(a.device, timeout)
        if not a.data:
            a.data = DataConfig.source
        if data is None:
            # read as given (its errors name the path the user wrote); recorded absolute, fingerprinted
            data = load_data(RunConfig(data=DataConfig(source=a.data, episodes=a.episodes,
                                                       steps=a.steps, data_seed=a.seed, missing=a.missing,
                                                       tokens=a.tokens, min_count=a.min_count)))
        config = new_run_config(a, data)  # the checks a reloaded config.json gets, before anything is written
        if data.source == ARRAYS_SOURCE:
            config.data.source = ARRAYS_SOURCE  # written into the run directory by its start (_train)
        elif run_dir is not None:
            config.data = record_data(config.data)  # the absolute source and its fingerprint

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


def _refuse_problem(config) -> None:
    """The first senseless value of a resumed run's config (its --epochs, --time-limit), said as the flag."""
    problem = config.problem()
    if problem:
        key, _, rest = problem.partition(" = ")  # 'section.key = value: why', said as the flag
        if rest and key.startswith(("train.", "model.")):
            problem = f"--{key.split('.', 1)[1].replace('_', '-')} = {rest}"
        raise ValueError(problem)


def _check_dims(data, config) -> None:
    """Refuse data whose dimensions differ from the run's model, naming the file."""
    if data.x_dim != config.model.x_dim or data.u_dim != config.model.u_dim:
        raise ValueError(f"{data.source}: x_dim {data.x_dim}, u_dim {data.u_dim} do not match the run's model "
                         f"(x_dim {config.model.x_dim}, u_dim {config.model.u_dim})")


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


def write_derived(run_dir, trainer, best: bool = True) -> None:
    """metrics.jsonl and best.pt, both derived from the trainer's state (and so from checkpoint.pt)."""
    from dvae.run import BEST, save_torch, write_metrics

    write_metrics(run_dir, trainer.rows)
    if best and trainer.best_model is not None:
        save_torch(os.path.join(run_dir, BEST), {"model": trainer.best_model, "epoch": trainer.state["best_epoch"]})


def write_train_plots(run_dir, model, config, data, normalizer, rows, stop=()) -> list:
    """training_curves.png, reconstruction.png and (trajectory data) prediction.png of a test sequence;
    the paths written. ``stop``: a container that becomes non-empty when the plots should stop (a signal)."""
    import torch

    from dvae.data import collate
    from dvae.eval import plot_predictions, plot_reconstructions, plot_training_curves, predict_windows
    from dvae.data.batching import sequence_lengths

    from dvae.eval.names import action_names, obs_names

    names = {"dim_names": obs_names(data.meta, config.model.x_dim, config.data.source)}  # units where known
    written = []
    path = os.path.join(run_dir, "training_curves.png")
    plot_training_curves(rows, path)
    written.append(path)
    if stop:
        return written

    xs, us = data.subset("test")
    cs = data.conditions("test", config.model.c_dim) if config.model.c_dim else None
    i = int(np.argmax(sequence_lengths(xs)))  # lazily read data: from the lengths, nothing read
    x, u = xs[i][:400], None if us is None else us[i][:400]
    batch = collate([torch.from_numpy(normalizer.x([x])[0])],
                    None if u is None else [torch.from_numpy(normalizer.u([u])[0])],
                    None if cs is None else [torch.from_numpy(cs[i])]).to(model.device)
    torch.manual_seed(config.train.seed)
    rec = model.reconstruct(batch, num_samples=32)["x_mean"][:, 0]  # (S, L, x_dim)
    rec = normalizer.x_inverse(rec).cpu().numpy()
    path = os.path.join(run_dir, "reconstruction.png")
    if getattr(config.model, "frame_shape", None):
        from dvae.eval.plots import plot_frame_strips
        plot_frame_strips(x, rec.mean(0), config.model.frame_shape, path, title="Reconstruction (step t)",
                          row_names=("truth", "reconstruction", "|error|"), first_step=0)
    else:
        plot_reconstructions(x, rec.mean(0), np.quantile(rec, 0.05, 0), np.quantile(rec, 0.95, 0), path,
                             kind=config.kind, token_names=getattr(data, "vocab", None), **names)
    written.append(path)
    if config.kind == "continuous" and len(x) >= 4 and not stop:
        context = max(2, len(x) // 3)
        horizon = len(x) - context
        w = predict_windows(model, normalizer, [x], None if u is None else [u], context, horizon, num_samples=64,
                            cs=None if cs is None else cs[i:i + 1])
        path = os.path.join(run_dir, "prediction.png")
        plot_predictions(x, context, w["mean"][0], w["lo"][0], w["hi"][0], path, controls=u, **names,
                         control_names=action_names(data.meta, config.model.u_dim, config.data.source))
        written.append(path)
    return written


def default_run_dir(model: str) -> str:
    """``runs/MODEL-TIMESTAMP``: where ``dvae train`` writes a run without --out."""
    return os.path.join("runs", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")
