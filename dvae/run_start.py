"""Starting a run: the settings of a new run checked and turned into its configs, a resumed run's read
back, and the data of either loaded, all before anything is written.

:func:`open_run` is the start :func:`dvae.fitting.train` makes; :func:`train_configs` and
:func:`prepare` are also how the benchmarks build runs of the defaults and their splits.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Optional

from dvae.errors import DataError


def open_run(a, data=None, timeout: Optional[float] = None):
    """The start of :func:`dvae.fitting.train` before the model is built: (config, data, run_dir,
    parallel). A resumed run (``a.resume``): its config.json read back with ``a.epochs`` and
    ``a.time_limit`` applied, and its data (``a.data``: from a new place, checked against the model and
    recorded). A new run: its settings and run directory checked, its data loaded (``data``: already
    loaded), its ``RunConfig`` made. Either way every check is done before anything is written, and
    ``parallel`` is the data-parallel group joined under torchrun (None otherwise)."""
    from dvae.device import resolve_device
    from dvae.infer.distributed import DEFAULT_TIMEOUT, init_from_env
    from dvae.rundir import check_new_run_dir
    from dvae.run import DataConfig, RunConfig, absolute_source, load_data, read_config, record_data
    from dvae.run_files import ARRAYS_SOURCE

    timeout = timeout or DEFAULT_TIMEOUT
    if a.resume:
        run_dir = a.resume
        config = read_config(run_dir)
        if a.epochs is not None:
            config.train.epochs = a.epochs
        if a.time_limit is not None:
            config.train.time_limit = a.time_limit
        refuse_problem(config)
        resolve_device(config.train.device)  # before anything is read or written
        parallel = init_from_env(config.train.device, timeout)
        moved = getattr(a, "data", None)
        data = load_data(config, None if moved is None else absolute_source(moved))
        if moved is not None:  # the run goes on with its data from here: recorded in config.json
            check_dims(data, config)
            config.data = record_data(replace(config.data, source=moved))
        return config, data, run_dir, parallel
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
        data = load_data(RunConfig(data=DataConfig(source=a.data, episodes=a.episodes, steps=a.steps,
                                                   data_seed=a.seed, missing=a.missing, tokens=a.tokens,
                                                   min_count=a.min_count)))
    config = new_run_config(a, data)  # the checks a reloaded config.json gets, before anything is written
    if data.source == ARRAYS_SOURCE:
        config.data.source = ARRAYS_SOURCE  # written into the run directory by its start
    elif run_dir is not None:
        config.data = record_data(config.data)  # the absolute source and its fingerprint
    return config, data, run_dir, parallel


def prepare(data, normalizer, split, c_dim: int = 0):
    """(xs, us) of a split, normalised; with ``c_dim``, (xs, us, cs) for a conditional model."""
    xs, us = data.subset(split)
    if c_dim:
        return normalizer.x(xs), normalizer.u(us), data.conditions(split, c_dim)
    return normalizer.x(xs), normalizer.u(us)


def train_configs(a, data):
    """The ModelConfig and TrainConfig of a new run from the train settings ``a`` and its loaded
    ``data`` (bench/bench_quality.py builds its runs of the defaults with this too)."""
    from dvae.infer.train_config import DEFAULT_EPOCHS, TrainConfig, default_lr
    from dvae.models import MODELS, ModelConfig

    likelihood = {"binary": "bernoulli", "categorical": "categorical"}.get(data.kind, "gaussian")
    model = ModelConfig(model=a.model, x_dim=data.x_dim, u_dim=data.u_dim, z_dim=a.z_dim, rnn_dim=a.rnn_dim,
                        rnn_type=a.rnn_type, transition_dim=a.transition_dim, emission_dim=a.emission_dim,
                        guide=a.guide, bidirectional=a.bidirectional, kl_balance=a.kl_balance,
                        emission_scale=a.emission_scale, vrae_decoder=a.vrae_decoder, rvae_causal=not a.rvae_noncausal,
                        kvae_components=a.kvae_components, kvae_state_dim=a.kvae_state_dim, v_dim=a.v_dim,
                        actions=(None if not data.u_dim else  # the loaders mark one-hot actions
                                 "discrete" if data.meta.get("actions") == "discrete" else "continuous"),
                        num_iafs=(a.num_iafs or 1) if a.guide == "iaf" else 0, iaf_dim=a.iaf_dim,
                        c_dim=data.c_dim if a.condition else 0,
                        likelihood=likelihood, missing=a.missing == "nan",
                        # frames: conv nets where the family has them (others read frames as vectors)
                        frame_shape=data.meta.get("frame_shape") if MODELS[a.model].frames else None)
    if model.bidirectional is None:  # the family's default, written out in config.json
        model.bidirectional = MODELS[a.model].default_bidirectional(model)
    epochs = a.epochs if a.epochs is not None else (None if a.time_limit is not None else DEFAULT_EPOCHS)
    train = TrainConfig(epochs=epochs, time_limit=a.time_limit, batch_size=a.batch_size,
                        lr=a.lr if a.lr is not None else default_lr(a.model), optimizer=a.optimizer, lr_decay=a.lr_decay, clip_norm=a.clip_norm, kl_start=a.kl_start,
                        anneal_epochs=a.anneal_epochs, free_bits=a.free_bits, beta=a.beta,
                        collapse_kl=a.collapse_kl, collapse_epochs=a.collapse_epochs, patience=a.patience,
                        seed=a.seed, device=a.device, vectorized=not a.per_step, bucket=not a.no_bucket,
                        lr_schedule=a.lr_schedule, lr_factor=a.lr_factor, lr_patience=a.lr_patience, min_lr=a.min_lr,
                        plateau_updates=a.plateau_updates,
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
    refuse_problem(config)  # the checks a reloaded config.json gets, before anything is written
    return config


def refuse_problem(config) -> None:
    """Raise ValueError with the first senseless value of ``config`` (``RunConfig.problem``), said as the
    flag where it is one (a new run's settings, a resumed run's --epochs or --time-limit)."""
    problem = config.problem()
    if problem:
        key, _, rest = problem.partition(" = ")  # 'section.key = value: why', said as the flag
        if rest and key.startswith(("train.", "model.")):
            problem = f"--{key.split('.', 1)[1].replace('_', '-')} = {rest}"
        raise ValueError(problem)


def check_dims(data, config) -> None:
    """Refuse data whose dimensions differ from the run's model, naming the file."""
    if data.x_dim != config.model.x_dim or data.u_dim != config.model.u_dim:
        raise ValueError(f"{data.source}: x_dim {data.x_dim}, u_dim {data.u_dim} do not match the run's model "
                         f"(x_dim {config.model.x_dim}, u_dim {config.model.u_dim})")


def default_run_dir(model: str) -> str:
    """``runs/MODEL-TIMESTAMP``: where ``dvae train`` writes a run without --out."""
    return os.path.join("runs", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")
