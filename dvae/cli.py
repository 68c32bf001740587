"""The ``dvae`` command: its verbs (collect, train, eval, score, plan, generate, impute, latent, ...),
each printing one JSON object; the flags and JSON keys are the stable contract the README lists.

Errors a user can fix (bad input, flags, files; ``_user_error``) are printed as one line on stderr
with a non-zero exit status (add --debug for the traceback); anything else is a bug and shows its
traceback. stdout carries only the JSON result.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def _user_error(e: BaseException) -> bool:
    """Whether ``e`` is something a user can fix (bad input, flags or files, a diverged run, memory),
    reported in one line; anything else (a RuntimeError from torch, a TypeError, ...) is a bug, and its
    traceback is shown as it is."""
    from dvae.errors import DvaeError

    return isinstance(e, (DvaeError, ValueError, FloatingPointError, OSError, MemoryError)) or \
        type(e).__name__ == "OutOfMemoryError"


def _add_common(p, device_and_seed: bool = False):
    """The flags every verb ends with; ``device_and_seed``: the verbs that read a run get --device and
    --seed before them."""
    if device_and_seed:
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
        p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def _add_run_and_split(p):
    """A trained run's directory and the data and split it is applied to."""
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="default: the run's own source")
    p.add_argument("--split", choices=["train", "valid", "test", "all"], default="test")


def build_parser() -> argparse.ArgumentParser:
    from dvae.infer.objectives import OBJECTIVES
    from dvae.infer.trainer import DEFAULT_EPOCHS, DEFAULT_LR, TrainConfig
    from dvae.models import MODELS, ModelConfig, all_guides
    from dvae.run import DataConfig

    mc, tc, dc = ModelConfig(), TrainConfig(), DataConfig()
    ap = argparse.ArgumentParser(prog="dvae", description="Dynamical VAEs (DMM, VRNN, VRAE) as Pyro programs.")
    sub = ap.add_subparsers(dest="verb", metavar="{collect,train,eval,score,plan,generate,impute,latent}")
    sub.required = True

    p = sub.add_parser("collect", help="collect trajectories from a Gymnasium env into an .npz")
    p.add_argument("--env", required=True, help="Gymnasium env id, e.g. Pendulum-v1")
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--steps", type=int, required=True, help="actions per episode (observations: steps + 1)")
    p.add_argument("--policy", choices=["random", "ou"], default="random",
                   help="uniform random actions, or Ornstein-Uhlenbeck (smooth) for continuous actions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .npz (with --shards: a directory)")
    p.add_argument("--shards", type=int, default=None, metavar="K",
                   help="write K shard .npz files and a manifest.json into the directory --out, one shard "
                        "collected at a time (the same episodes as one file); train reads it lazily")
    _add_common(p)

    p = sub.add_parser("train", help="fit a model by SVI on the dynamical ELBO")
    p.add_argument("--model", choices=list(MODELS), default=mc.model,
                   help="lgssm: the linear-Gaussian baseline with an exact likelihood; "
                        "vae: the static frame-wise baseline (no temporal model)")
    p.add_argument("--data", default=dc.source, help="pendulum (built-in), a trajectory .npz, a polyphonic pickle, "
                   "or a text file (*.txt or text:PATH, one token sequence per line)")
    p.add_argument("--missing", choices=["none", "nan"], default=dc.missing,
                   help="nan: NaN entries of the observations are missing (masked), not bad input")
    p.add_argument("--tokens", choices=["words", "chars"], default=dc.tokens,
                   help="text data: a line's tokens are its whitespace-separated words, or its characters")
    p.add_argument("--min-count", type=int, default=dc.min_count,
                   help="text data: training tokens seen fewer times map to <unk>")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"total epochs (default: with --time-limit none, the limit or convergence ends training; "
                        f"without it {DEFAULT_EPOCHS})")
    p.add_argument("--time-limit", type=float, default=None, help="seconds of training (default: no limit)")
    p.add_argument("--batch-size", type=int, default=tc.batch_size)
    p.add_argument("--lr", type=float, default=None,
                   help="Adam's learning rate (default: per model, " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
                   + ")")
    p.add_argument("--z-dim", type=int, default=mc.z_dim)
    p.add_argument("--rnn-dim", type=int, default=mc.rnn_dim)
    p.add_argument("--rnn-type", choices=["gru", "lstm", "rnn"], default=mc.rnn_type)
    p.add_argument("--transition-dim", type=int, default=mc.transition_dim)
    p.add_argument("--emission-dim", type=int, default=mc.emission_dim)
    p.add_argument("--guide", choices=list(all_guides()), default=mc.guide,
                   help="DMM guide: dks (backward RNN + combiner), mean_field, ltr (forward RNN: filtering) or iaf "
                        "(dks followed by affine autoregressive flows on each step); SRNN guide: dks or resq "
                        "(its mean a residual on the prior's)")
    p.add_argument("--num-iafs", type=int, default=None,
                   help="guide iaf: affine autoregressive transforms per step (default 1)")
    p.add_argument("--iaf-dim", type=int, default=mc.iaf_dim, help="guide iaf: hidden size of each flow's network")
    p.add_argument("--optimizer", choices=["adam", "clipped_adam"], default=tc.optimizer)
    p.add_argument("--lr-decay", type=float, default=tc.lr_decay,
                   help="clipped_adam: learning-rate decay per update (1: none)")
    p.add_argument("--clip-norm", type=float, default=tc.clip_norm, help="global gradient-norm clip (0: none)")
    p.add_argument("--kl-start", type=float, default=tc.kl_start, help="KL annealing factor at the first update")
    p.add_argument("--anneal-epochs", type=float, default=tc.anneal_epochs, help="epochs of linear KL warm-up")
    p.add_argument("--free-bits", type=float, default=tc.free_bits,
                   help="nats per latent dim per step (rssm: PlaNet's free nats F are F / z-dim)")
    p.add_argument("--kl-balance", type=float, default=mc.kl_balance,
                   help="rssm: KL balancing weight alpha in [0, 1) on the prior's side (DreamerV2: 0.8; 0: off)")
    p.add_argument("--beta", type=float, default=tc.beta,
                   help="weight on the KL (beta-VAE; 1: the ELBO); multiplies the annealing factor")
    p.add_argument("--collapse-kl", type=float, default=tc.collapse_kl,
                   help="posterior-collapse warning: validation KL per step (nats) counted as collapsed")
    p.add_argument("--collapse-epochs", type=int, default=tc.collapse_epochs,
                   help="posterior-collapse warning: consecutive collapsed epochs before it warns")
    p.add_argument("--bidirectional", action="store_true",
                   help="bidirectional encoder RNN (vrae; dmm guide: q(z_t | z_{t-1}, x_{1:T}))")
    p.add_argument("--condition", action="store_true",
                   help="conditional vrae/dmm on the .npz's per-sequence 'cond' (N, c_dim) or 'labels' (N,) (one-hot)")
    p.add_argument("--patience", type=int, default=tc.patience,
                   help=f"early stopping: epochs without a better validation bound once the learning-rate schedule "
                        f"has reached --min-lr (0: never stop early) (default {tc.patience})")
    p.add_argument("--lr-schedule", choices=["plateau", "none"], default=tc.lr_schedule,
                   help=f"plateau: multiply the rate by --lr-factor after --lr-patience epochs without a better "
                        f"validation bound, down to --min-lr; none: a constant rate (default {tc.lr_schedule})")
    p.add_argument("--lr-factor", type=float, default=tc.lr_factor,
                   help=f"plateau schedule: factor on the rate at each reduction, in (0, 1) (default {tc.lr_factor:g})")
    p.add_argument("--lr-patience", type=int, default=tc.lr_patience,
                   help=f"plateau schedule: epochs without improvement before a reduction (default {tc.lr_patience})")
    p.add_argument("--min-lr", type=float, default=tc.min_lr,
                   help=f"plateau schedule: the floor of the rate (default {tc.min_lr:g})")
    p.add_argument("--objective", choices=list(OBJECTIVES), default=tc.objective,
                   help="training bound per real step: elbo (the dynamical ELBO, closed-form KL) or iwae (the "
                        f"--train-samples-sample importance-weighted bound); validation reports the ELBO either way "
                        f"(default {tc.objective})")
    p.add_argument("--train-samples", type=int, default=tc.train_samples, metavar="K",
                   help=f"samples per sequence of the training bound: iwae's K, or elbo draws averaged "
                        f"(default {tc.train_samples})")
    p.add_argument("--per-step", action="store_true",
                   help="train the classic per-step Pyro program instead of the time-vectorized one")
    p.add_argument("--no-bucket", action="store_true", help="random batches instead of length buckets")
    p.add_argument("--episodes", type=int, default=dc.episodes, help="built-in pendulum: episodes")
    p.add_argument("--steps", type=int, default=dc.steps, help="built-in pendulum: actions per episode")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=tc.device)
    p.add_argument("--seed", type=int, default=tc.seed)
    p.add_argument("--out", default=None, help="run directory (default runs/MODEL-TIMESTAMP)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue a run to --epochs total")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true",
                   help="skip the PNGs written after training (training curves, reconstruction, prediction)")
    p.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="under torchrun: seconds a collective waits for the other ranks before the run fails "
                        "(default 300)")
    _add_common(p)

    p = sub.add_parser("eval", help="bounds per time step (and k-step open-loop errors) of a trained run")
    _add_run_and_split(p)
    p.add_argument("--iw-samples", type=int, default=0, help="K of the importance-weighted bound")
    p.add_argument("--particles", type=int, default=0,
                   help="also the bootstrap particle filter's estimate with N particles (dmm, vrnn): nll_pf_per_step")
    p.add_argument("--context", type=int, default=None)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=64, help="samples of the predictive distribution")
    p.add_argument("--plots", metavar="DIR", default=None,
                   help="with --horizon: write kstep_errors.png and prediction plots with bands into DIR")
    p.add_argument("--missing", choices=["none", "nan"], default=None,
                   help="nan: NaN entries are missing observations (default: as the run was trained)")
    _add_common(p, device_and_seed=True)

    p = sub.add_parser("score", help="anomaly scores per sequence and per time step, with a threshold")
    _add_run_and_split(p)
    p.add_argument("--iw-samples", type=int, default=0, help="also the K-sample importance-weighted bound")
    p.add_argument("--quantile", type=float, default=0.99,
                   help="threshold: this quantile of neg_elbo_per_step over the run's validation split")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--missing", choices=["none", "nan"], default=None,
                   help="nan: NaN entries are missing observations (default: as the run was trained)")
    _add_common(p, device_and_seed=True)

    p = sub.add_parser("latent", help="latent codes in 2-D (PCA, t-SNE) coloured by a label; interpolation and "
                                      "traversal of VRAE codes, decoded; PNGs")
    _add_run_and_split(p)
    p.add_argument("--label", default="auto",
                   help="colour: auto, energy (Pendulum), length, index, or an (N,) array of the .npz (e.g. labels)")
    p.add_argument("--pair", type=int, nargs=2, metavar=("I", "J"), default=None,
                   help="positions in the split of the two sequences to interpolate between "
                        "(default: lowest and highest label)")
    p.add_argument("--dim", type=int, default=None, help="latent dimension to traverse (default: the most varied)")
    p.add_argument("--num-points", type=int, default=7, help="codes along each interpolation and the traversal")
    p.add_argument("--span", type=float, default=2.0, help="traversal: prior standard deviations either side of 0")
    p.add_argument("--no-tsne", action="store_true", help="skip t-SNE (it needs scikit-learn: pip install dvae[latent])")
    p.add_argument("--out", default=None, help="directory for the PNGs (default RUN_DIR/latent)")
    _add_common(p, device_and_seed=True)

    p = sub.add_parser("plan", help="model-predictive control in a real env with the learned model")
    p.add_argument("run_dir")
    p.add_argument("--env", required=True, help="Gymnasium env id with a known reward (Pendulum-v1)")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--planner", choices=["cem", "mppi"], default="cem")
    p.add_argument("--horizon", type=int, default=25)
    p.add_argument("--num-samples", type=int, default=300, help="candidate action sequences per iteration")
    p.add_argument("--iterations", type=int, default=4, help="planner refinements per real step")
    p.add_argument("--history", type=int, default=16, help="real observations the world model is filtered on")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--no-baselines", action="store_true", help="skip the random and true-simulator baselines")
    p.add_argument("--save-episodes", metavar="FILE.npz", default=None,
                   help="write the planner's real episodes as trajectories (to train on them)")
    _add_common(p, device_and_seed=True)

    p = sub.add_parser("generate", help="sample sequences from the prior; text runs decode them to tokens")
    p.add_argument("run_dir")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=50, help="time steps per sample (text: at most, cut at <eos>)")
    _add_common(p, device_and_seed=True)

    p = sub.add_parser("impute", help="fill the missing (NaN) observations of an .npz from the posterior")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True, help="a trajectory .npz whose NaN entries of obs are missing")
    p.add_argument("--out", required=True, help="output .npz: obs filled, obs_mean, obs_lo, obs_hi, missing")
    p.add_argument("--num-samples", type=int, default=100, help="posterior predictive samples")
    _add_common(p, device_and_seed=True)

    return ap


# --- collect -----------------------------------------------------------------------------------------
def cmd_collect(a) -> dict:
    from envs import collect, save_npz

    if a.episodes < 1 or a.steps < 1:
        raise ValueError("--episodes and --steps must be at least 1")
    if a.shards is not None:
        return _collect_shards(a)
    data = collect(a.env, a.episodes, a.steps, policy=a.policy, seed=a.seed, progress=True)
    save_npz(a.out, data)
    return {"out": a.out, "env_id": a.env, "episodes": a.episodes, "steps": a.steps, "policy": a.policy,
            "seed": a.seed, "obs_shape": list(data["obs"].shape), "actions_shape": list(data["actions"].shape),
            "num_transitions": int(data["lengths"].sum())}


def _collect_shards(a) -> dict:
    """``dvae collect --shards K``: K shards (episodes split as evenly as possible), each collected and
    written before the next (memory: one shard), then the manifest (written last: a directory with a
    manifest is complete)."""
    from dvae.data.lazy import write_manifest
    from envs import collect, save_npz

    if not 1 <= a.shards <= a.episodes:
        raise ValueError(f"--shards must lie between 1 and --episodes ({a.episodes})")
    if a.out.endswith(".npz"):
        raise ValueError("with --shards, --out is a directory (it gets manifest.json and the shards)")
    if os.path.exists(os.path.join(a.out, "manifest.json")):
        raise ValueError(f"{a.out}: already holds a manifest.json")
    os.makedirs(a.out, exist_ok=True)
    bounds = np.linspace(0, a.episodes, a.shards + 1).round().astype(int)
    shards, transitions = [], 0
    for k in range(a.shards):
        first, n = int(bounds[k]), int(bounds[k + 1] - bounds[k])
        data = collect(a.env, n, a.steps, policy=a.policy, seed=a.seed, first_episode=first)
        data["first_episode"] = np.array(first, np.int64)
        name = f"shard-{k:05d}.npz"
        save_npz(os.path.join(a.out, name), data)
        shards.append({"file": name, "episodes": n, "first_episode": first})
        transitions += int(data["lengths"].sum())
        print(f"dvae collect: {name}: episodes {first}..{first + n - 1}", file=sys.stderr, flush=True)
    manifest = write_manifest(a.out, shards, {"env_id": a.env, "steps": a.steps, "policy": a.policy, "seed": a.seed})
    return {"out": a.out, "manifest": manifest, "shards": a.shards, "env_id": a.env, "episodes": a.episodes,
            "steps": a.steps, "policy": a.policy, "seed": a.seed, "obs_shape": [a.episodes] + list(data["obs"].shape[1:]),
            "actions_shape": [a.episodes] + list(data["actions"].shape[1:]), "num_transitions": transitions}


# --- train -------------------------------------------------------------------------------------------
def _prepare(data, normalizer, split, c_dim: int = 0):
    """(xs, us) of a split, normalised; with ``c_dim``, (xs, us, cs) for a conditional model."""
    xs, us = data.subset(split)
    if c_dim:
        return normalizer.x(xs), normalizer.u(us), data.conditions(split, c_dim)
    return normalizer.x(xs), normalizer.u(us)


def train_configs(a, data):
    """The ModelConfig and TrainConfig of a new run from the train verb's arguments ``a`` and its loaded
    ``data`` (bench/bench_quality.py builds its runs of the defaults with this too)."""
    from dvae.infer.trainer import DEFAULT_EPOCHS, TrainConfig, default_lr
    from dvae.models import ModelConfig

    likelihood = {"binary": "bernoulli", "categorical": "categorical"}.get(data.kind, "gaussian")
    model = ModelConfig(model=a.model, x_dim=data.x_dim, u_dim=data.u_dim, z_dim=a.z_dim, rnn_dim=a.rnn_dim,
                        rnn_type=a.rnn_type, transition_dim=a.transition_dim, emission_dim=a.emission_dim,
                        guide=a.guide, bidirectional=a.bidirectional, kl_balance=a.kl_balance,
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


def cmd_train(a) -> dict:
    """Train a new run or resume one; under torchrun (WORLD_SIZE > 1) as one rank of a data-parallel
    run (``dvae.infer.distributed``): every rank reads the config and the data, rank 0 alone writes."""
    import torch

    from dvae.data import Normalizer
    from dvae.infer.distributed import DEFAULT_TIMEOUT, init_from_env, shutdown
    from dvae.errors import DataError
    from dvae.device import resolve_device
    from dvae.models import MODELS, ModelConfig
    from dvae.run import (DataConfig, RunConfig, load_data, read_config, write_config)

    if a.resume:
        run_dir = a.resume
        config = read_config(run_dir)
        if a.epochs is not None:
            config.train.epochs = a.epochs
        if a.time_limit is not None:
            config.train.time_limit = a.time_limit
        parallel = init_from_env(config.train.device, a.dist_timeout or DEFAULT_TIMEOUT)
        data = load_data(config)
        normalizer = config.normalizer
    else:
        if a.epochs is not None and a.epochs < 1:
            raise ValueError("--epochs must be at least 1")
        family = MODELS[a.model]
        if (a.bidirectional and not family.bidirectional_encoder) or (a.condition and not family.conditional):
            both = " and ".join(n for n, c in MODELS.items() if c.bidirectional_encoder and c.conditional)
            raise ValueError(f"--bidirectional and --condition are for {both}, not {a.model}")
        if a.min_count < 1:
            raise ValueError("--min-count must be at least 1")
        family_guides = family.guides
        owners = [n.upper() for n, c in MODELS.items() if a.guide in c.guides]
        if a.guide != ModelConfig.guide and a.guide not in family_guides:
            raise ValueError(f"--guide {a.guide} is a {' or '.join(owners)} guide, not a guide of {a.model} "
                             f"({'its guides: ' + ', '.join(family_guides) if family_guides else 'it has one guide'})")
        if a.guide == "ltr" and a.bidirectional:
            raise ValueError("--guide ltr is the filtering guide (a forward RNN): it takes no --bidirectional")
        if a.num_iafs is not None and (a.guide != "iaf" or a.num_iafs < 1):
            raise ValueError("--num-iafs takes a number >= 1, with --guide iaf")
        if a.iaf_dim < 1:
            raise ValueError("--iaf-dim must be at least 1")
        data_cfg = DataConfig(source=a.data, episodes=a.episodes, steps=a.steps, data_seed=a.seed,
                              missing=a.missing, tokens=a.tokens, min_count=a.min_count)
        run_dir = a.out or os.path.join("runs", f"{a.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        if os.path.exists(os.path.join(run_dir, "config.json")):
            raise ValueError(f"{run_dir}: already holds a run (use --resume {run_dir}, or another --out)")
        # every rank has checked the run directory before joining; rank 0 writes it after
        parallel = init_from_env(a.device, a.dist_timeout or DEFAULT_TIMEOUT)
        config = RunConfig(data=data_cfg)
        data = load_data(config)
        if a.condition and data.cs is None:
            raise DataError(f"{data.source}: --condition needs a per-sequence 'cond' (N, c_dim) or 'labels' (N,) "
                            "array in the .npz")
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
        if parallel is None or parallel.is_main:
            os.makedirs(run_dir, exist_ok=True)
            write_config(run_dir, config)

    device = resolve_device(config.train.device) if parallel is None else parallel.device
    # ReLU-RNN gradients decaying into denormals slow CPU training (docs/performance.md); the flag is
    # process-wide, so it is switched off again when training returns
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        return _train(a, config, data, normalizer, run_dir, device, parallel)
    finally:
        if flush:
            torch.set_flush_denormal(False)
        shutdown(parallel)


def _train(a, config, data, normalizer, run_dir, device, parallel=None) -> dict:
    import warnings

    import pyro

    from dvae.infer.diagnostics import PosteriorCollapseWarning
    from dvae.infer.trainer import Trainer
    from dvae.models import build_model
    from dvae.run import BEST, CHECKPOINT, load_torch, save_torch

    main_rank = parallel is None or parallel.is_main  # the one process that writes files and prints
    pyro.set_rng_seed(config.train.seed)
    model = build_model(config.model).to(device)
    c_dim = config.model.c_dim
    train_data, valid_data = _prepare(data, normalizer, "train", c_dim), _prepare(data, normalizer, "valid", c_dim)
    if parallel is None:
        trainer = Trainer(model, config.train, train_data, valid_data, normalizer.log_det_per_step, device,
                          x_log_std=normalizer.log_std)
    else:
        from dvae.infer.distributed import DataParallelTrainer

        if c_dim:
            raise ValueError("conditional models (--condition) do not train under torchrun yet")
        trainer = DataParallelTrainer(model, config.train, train_data, valid_data, normalizer.log_det_per_step,
                                      device, env=parallel)
    ckpt_path, _best_path = os.path.join(run_dir, CHECKPOINT), os.path.join(run_dir, BEST)

    def save_checkpoint():
        ckpt = trainer.checkpoint()  # data-parallel: a collective, on every rank
        if main_rank:
            save_torch(ckpt_path, ckpt)

    if a.resume:
        trainer.load_checkpoint(load_torch(ckpt_path, device))
        if main_rank:
            _write_derived(run_dir, trainer)  # repair metrics.jsonl and best.pt after a kill at any moment
    else:  # from the first moment on, the run directory can be evaluated and resumed
        save_checkpoint()

    collapse_told = [trainer.state.get("collapse_warned", False)]

    def on_epoch(row, improved):
        save_checkpoint()  # the one file that restores the run, written first
        if not main_rank:
            return
        _write_derived(run_dir, trainer, best=improved)
        if row.get("posterior_collapse") and not collapse_told[0]:  # once per run; the Python warning is muted
            collapse_told[0] = True
            print(f"dvae train: warning: posterior collapse at epoch {row['epoch']}: the validation KL per step "
                  f"has stayed below {config.train.collapse_kl} nats for {config.train.collapse_epochs} epochs "
                  f"({row['valid_kl_per_step']:.3g} now, {row['active_units']} active units): the latent code is "
                  "ignored (try --free-bits, --anneal-epochs, --beta < 1)", file=sys.stderr, flush=True)
        if not sys.stderr.isatty() and not a.no_progress:
            print(f"epoch {row['epoch']}: train_loss {row['train_loss']:.4f}  valid -elbo/step "
                  f"{row['valid_neg_elbo_per_step']:.4f}  ({row['epoch_seconds']:.1f}s)", file=sys.stderr, flush=True)

    def on_signal(signum, frame):
        if trainer._stop_requested:  # a second signal: stop now (the last checkpoint stands)
            raise KeyboardInterrupt
        print(f"dvae train: {signal.Signals(signum).name} received: stopping after this update and "
              "writing a checkpoint (send again to stop at once)", file=sys.stderr, flush=True)
        trainer.request_stop()

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with warnings.catch_warnings():  # on_epoch says it in one line instead
            warnings.simplefilter("ignore", PosteriorCollapseWarning)
            trainer.fit(on_epoch, progress=main_rank and not a.no_progress and sys.stderr.isatty())
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    if trainer.stopped:
        save_checkpoint()
    summary = {"run_dir": run_dir, "model": config.model.model, "data": config.data.source,
               "epochs": trainer.state["epoch"], "best_epoch": trainer.state["best_epoch"],
               "best_valid_neg_elbo_per_step": trainer.state["best_valid"],
               "train_seconds": trainer.state["train_seconds"], "skipped_updates": trainer.state["skipped_updates"],
               "faults": trainer.state["faults"], "interrupted": trainer.stopped}
    if parallel is not None:
        summary["world_size"] = parallel.world_size
    if trainer.stopped:
        if main_rank:
            print(json.dumps(summary))
            print(f"dvae train: interrupted; continue with: dvae train --resume {run_dir}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED)
    if trainer.best_model is None:
        from dvae.errors import DvaeError

        raise DvaeError("no epoch completed (is the time limit too short?)")
    if not main_rank:
        return None  # rank 0 writes the plots and prints the summary
    model.load_state_dict(trainer.best_model)
    summary["plots"] = [] if getattr(a, "no_plots", False) else write_train_plots(run_dir, model, config, data,
                                                                                 normalizer, trainer.rows)
    return summary


def _write_derived(run_dir, trainer, best: bool = True) -> None:
    """metrics.jsonl and best.pt, both derived from the trainer's state (and so from checkpoint.pt)."""
    from dvae.run import BEST, save_torch, write_metrics

    write_metrics(run_dir, trainer.rows)
    if best and trainer.best_model is not None:
        save_torch(os.path.join(run_dir, BEST), {"model": trainer.best_model, "epoch": trainer.state["best_epoch"]})


def write_train_plots(run_dir, model, config, data, normalizer, rows) -> list:
    """training_curves.png, reconstruction.png and (trajectory data) prediction.png of a test sequence."""
    import torch

    from dvae.data import collate
    from dvae.eval import plot_predictions, plot_reconstructions, plot_training_curves, predict_windows

    written = []
    path = os.path.join(run_dir, "training_curves.png")
    plot_training_curves(rows, path)
    written.append(path)
    from dvae.data.batching import sequence_lengths

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
                             binary=config.kind in ("binary", "categorical"))
    written.append(path)
    if config.kind == "continuous" and len(x) >= 4:
        context = max(2, len(x) // 3)
        horizon = len(x) - context
        w = predict_windows(model, normalizer, [x], None if u is None else [u], context, horizon, num_samples=64,
                            cs=None if cs is None else cs[i:i + 1])
        path = os.path.join(run_dir, "prediction.png")
        plot_predictions(x, context, w["mean"][0], w["lo"][0], w["hi"][0], path)
        written.append(path)
    return written


def _check_dims(data, config) -> None:
    """Refuse data whose dimensions differ from the run's model, naming the file."""
    if data.x_dim != config.model.x_dim or data.u_dim != config.model.u_dim:
        raise ValueError(f"{data.source}: x_dim {data.x_dim}, u_dim {data.u_dim} do not match the run's model "
                         f"(x_dim {config.model.x_dim}, u_dim {config.model.u_dim})")


# --- eval --------------------------------------------------------------------------------------------
def cmd_eval(a) -> dict:
    import pyro

    from dvae.errors import DataError
    from dvae.eval import kstep_report
    from dvae.device import resolve_device
    from dvae.infer.evaluation import evaluate
    from dvae.run import load_data, load_model

    device = resolve_device(a.device)
    model, config = load_model(a.run_dir, device)
    data = load_data(config, a.data, None if a.missing is None else a.missing == "nan")
    _check_dims(data, config)
    norm = config.normalizer
    xs, us = data.subset(a.split)
    if not xs:
        raise ValueError(f"{data.source}: split {a.split!r} is empty")
    if a.iw_samples < 0:
        raise ValueError("--iw-samples must be >= 0")
    if a.particles < 0:
        raise ValueError("--particles must be >= 0")
    if a.particles:
        from dvae.infer.smc import filter_for

        filter_for(model)  # a one-line error for a family the filter does not run on, before any work
    pyro.set_rng_seed(a.seed)
    cs = data.conditions(a.split, config.model.c_dim) if config.model.c_dim else None
    out = {"run_dir": a.run_dir, "model": config.model.model, "data": data.source, "split": a.split}
    out.update(evaluate(model, norm.x(xs), norm.u(us), norm.log_det_per_step, config.train.eval_batch_size,
                        iw_samples=a.iw_samples, device=device, cs=cs, x_log_std=norm.log_std))
    if config.kind == "categorical":  # text: the figures are nats per token (<eos> included)
        out.update(vocab_size=len(config.vocab), log_vocab_size=float(np.log(len(config.vocab))),
                   perplexity_bound=float(np.exp(out["neg_elbo_per_step"])))
    num_missing = int(sum(np.isnan(x).sum() for x in xs))
    if num_missing:
        out["num_missing_entries"] = num_missing
    if getattr(model, "exact", False):  # the bound is the exact log-likelihood
        out["nll_exact_per_step"] = out["neg_elbo_per_step"]
    if a.particles:
        from dvae.infer.smc import evaluate_pf

        out["nll_pf_per_step"] = evaluate_pf(model, norm.x(xs), norm.u(us), a.particles, norm.log_det_per_step,
                                             max(1, min(config.train.eval_batch_size, 200_000 // a.particles)),
                                             cs=cs, x_log_std=norm.log_std)["nll_pf_per_step"]
    if (a.context is None) != (a.horizon is None):
        raise ValueError("--context and --horizon go together")
    if a.horizon is not None:
        if a.context < 1 or a.horizon < 1:
            raise ValueError("--context and --horizon must be at least 1")
        if num_missing or config.kind == "categorical":
            raise ValueError("--context/--horizon (k-step errors) need fully observed continuous data")
        train_xs, train_us = data.subset("train")
        try:
            out.update(kstep_report(model, norm, xs, us, train_xs, train_us, a.context, a.horizon, a.num_samples,
                                    plot_dir=a.plots, cs=cs))
        except ValueError as e:  # e.g. no sequence as long as context + horizon
            raise DataError(f"{data.source}: split {a.split}: {e}") from None
    return out


# --- score -------------------------------------------------------------------------------------------
def cmd_score(a):
    import pyro

    from dvae.infer.scores import sequence_scores, threshold_from
    from dvae.device import resolve_device
    from dvae.run import load_data, load_model

    if not 0 < a.quantile < 1:
        raise ValueError("--quantile must lie strictly between 0 and 1")
    if a.iw_samples < 0:
        raise ValueError("--iw-samples must be >= 0")
    model, config = load_model(a.run_dir, resolve_device(a.device))
    missing = None if a.missing is None else a.missing == "nan"
    data = load_data(config, a.data, missing)
    _check_dims(data, config)
    norm = config.normalizer
    pyro.set_rng_seed(a.seed)
    idx = data.indices(a.split)
    xs, us = data.subset(a.split)
    c_dim = config.model.c_dim
    cs = data.conditions(a.split, c_dim) if c_dim else None
    scores = sequence_scores(model, norm.x(xs), norm.u(us), norm.log_det_per_step, a.iw_samples, cs=cs,
                             x_log_std=norm.log_std)
    reference = load_data(config) if a.data else data  # the threshold comes from the run's own validation split
    vx, vu = reference.subset("valid")
    vc = reference.conditions("valid", c_dim) if c_dim else None
    pyro.set_rng_seed(a.seed)  # the same draws as the scores above, where they score the same sequences
    valid_scores = sequence_scores(model, norm.x(vx), norm.u(vu), norm.log_det_per_step, cs=vc, x_log_std=norm.log_std)
    threshold = threshold_from(valid_scores, a.quantile)
    step_threshold = float(np.quantile(np.concatenate([s["per_step"] for s in valid_scores]), a.quantile))
    sequences = [{"index": i, **s, "anomalous": s["neg_elbo_per_step"] > threshold} for i, s in zip(idx, scores)]
    result = {"run_dir": a.run_dir, "data": data.source, "split": a.split, "threshold": threshold,
              "threshold_key": "neg_elbo_per_step", "quantile": a.quantile, "step_threshold": step_threshold,
              "sequences": sequences}
    if a.format == "json":
        return result
    lines = [f"# threshold={threshold!r} (quantile {a.quantile} of neg_elbo_per_step on the validation split); "
             f"step_threshold={step_threshold!r} (of the per-step scores)",
             "index,step,neg_elbo"]
    lines += [f"{s['index']},{t},{v!r}" for s in sequences for t, v in enumerate(s["per_step"])]
    return "\n".join(lines)


# --- latent ------------------------------------------------------------------------------------------
def cmd_latent(a) -> dict:
    import pyro

    from dvae.eval.latent import latent_report
    from dvae.device import resolve_device
    from dvae.run import load_data, load_model

    if a.num_points < 2:
        raise ValueError("--num-points must be at least 2")
    model, config = load_model(a.run_dir, resolve_device(a.device))
    data = load_data(config, a.data)
    _check_dims(data, config)
    pyro.set_rng_seed(a.seed)
    out_dir = a.out or os.path.join(a.run_dir, "latent")
    report = latent_report(model, config.normalizer, data, a.split, out_dir, a.label, a.pair, a.dim, a.num_points,
                           a.span, not a.no_tsne, a.seed)
    return {"run_dir": a.run_dir, "model": config.model.model, "data": data.source, "split": a.split, **report}


# --- plan --------------------------------------------------------------------------------------------
def cmd_plan(a) -> dict:
    from dvae.control import PlannerConfig
    from dvae.device import resolve_device
    from dvae.planning import model_policy, random_policy, run_episodes, true_policy
    from dvae.run import load_model
    from envs.rewards import reward_fn
    from envs.simulators import true_returns

    for name in ("episodes", "horizon", "num_samples", "iterations", "history", "max_steps"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if a.horizon < 2:
        raise ValueError("--horizon must be at least 2")
    reward = reward_fn(a.env)
    model, config = load_model(a.run_dir, resolve_device(a.device))
    pc = PlannerConfig(horizon=a.horizon, num_samples=a.num_samples, iterations=a.iterations)
    t0 = time.perf_counter()
    record = [] if a.save_episodes else None
    returns = run_episodes(a.env, model_policy(model, config.normalizer, reward, a.planner, pc, a.seed, a.history),
                           a.episodes, a.seed, a.max_steps, record=record)
    out = {"run_dir": a.run_dir, "env": a.env, "planner": a.planner, "episodes": a.episodes,
           "mean_return": float(np.mean(returns)), "returns": returns, "seconds": time.perf_counter() - t0,
           "baselines": {}}
    if a.save_episodes:
        from dvae.planning import episodes_to_trajectories
        from envs import save_npz

        save_npz(a.save_episodes, episodes_to_trajectories(record, a.env, a.seed, f"{a.planner} on {a.run_dir}"))
        out["saved_episodes"] = a.save_episodes
    if not a.no_baselines:
        rnd = run_episodes(a.env, random_policy(a.seed), a.episodes, a.seed, a.max_steps)
        out["baselines"]["random"] = {"mean_return": float(np.mean(rnd)), "returns": rnd}
        factory = true_returns(a.env)
        if factory is not None:
            tr = run_episodes(a.env, true_policy(factory, a.planner, pc, a.seed), a.episodes, a.seed, a.max_steps)
            out["baselines"]["true_model"] = {"mean_return": float(np.mean(tr)), "returns": tr}
            gap = out["baselines"]["true_model"]["mean_return"] - out["baselines"]["random"]["mean_return"]
            if gap != 0:
                out["normalized_return"] = (out["mean_return"] - out["baselines"]["random"]["mean_return"]) / gap
    return out


# --- generate ----------------------------------------------------------------------------------------
def cmd_generate(a) -> dict:
    import pyro
    import torch

    from dvae.device import resolve_device
    from dvae.run import load_model

    if a.num_samples < 1 or a.steps < 1:
        raise ValueError("--num-samples and --steps must be at least 1")
    model, config = load_model(a.run_dir, resolve_device(a.device))
    model.eval()
    norm = config.normalizer
    pyro.set_rng_seed(a.seed)
    u = None
    if config.model.u_dim:  # no control applied: zeros in data units
        u = torch.from_numpy(norm.u([np.zeros((a.steps, config.model.u_dim), np.float32)])[0])  # (T, u_dim)
    g = model.generate(a.steps, u=u, num_samples=a.num_samples)
    out = {"run_dir": a.run_dir, "model": config.model.model, "kind": config.kind, "num_samples": a.num_samples,
           "num_steps": a.steps, "seed": a.seed}
    if config.model.u_dim:
        out["controls"] = "zero (data units)"
    if config.kind == "categorical":
        from dvae.data.text import EOS_ID, Vocabulary, join

        vocab = Vocabulary(config.vocab)
        ids = g["x"].argmax(-1).cpu().numpy()  # (S, T): the one-hot draws as token ids
        out["sequences"] = [vocab.decode(row) for row in ids]
        out["texts"] = [join(seq, config.data.tokens) for seq in out["sequences"]]
        out["ended"] = [bool((row == EOS_ID).any()) for row in ids]  # reached <eos> within --steps
    else:
        out["x"] = norm.x_inverse(g["x"]).cpu().numpy().tolist()  # (S, T, x_dim), data units
        out["x_mean"] = norm.x_inverse(g["x_mean"]).cpu().numpy().tolist()
    return out


# --- impute ------------------------------------------------------------------------------------------
def cmd_impute(a) -> dict:
    import pyro

    from dvae.data import load_npz
    from dvae.eval.impute import impute_sequences
    from dvae.device import resolve_device
    from dvae.run import atomic_write_bytes, load_model

    if a.num_samples < 1:
        raise ValueError("--num-samples must be at least 1")
    if not a.data.endswith(".npz"):
        raise ValueError(f"{a.data}: impute reads a trajectory .npz")
    model, config = load_model(a.run_dir, resolve_device(a.device))
    if config.kind != "continuous":
        raise ValueError("impute needs a run trained on continuous data")
    data = load_npz(a.data, missing=True)
    _check_dims(data, config)
    pyro.set_rng_seed(a.seed)
    norm = config.normalizer
    filled = impute_sequences(model, norm, data.xs, data.us, a.num_samples, config.train.eval_batch_size)
    with np.load(a.data, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    obs = np.asarray(arrays["obs"], np.float32)
    obs = obs[..., None] if obs.ndim == 2 else obs
    missing = np.isnan(obs)
    out = {"obs_mean": np.full_like(obs, np.nan), "obs_lo": np.full_like(obs, np.nan), "obs_hi": np.full_like(obs, np.nan)}
    obs = obs.copy()
    for i, r in enumerate(filled):  # real steps only; padding is left as it was
        L = len(r["x"])
        obs[i, :L] = r["x"]
        for k in ("mean", "lo", "hi"):
            out[f"obs_{k}"][i, :L] = r[k]
    arrays.update(obs=obs, missing=missing, **out)
    atomic_write_bytes(a.out, lambda f: np.savez(f, **arrays))
    return {"run_dir": a.run_dir, "data": a.data, "out": a.out, "num_sequences": len(data.xs),
            "num_missing_entries": int(sum(np.isnan(x).sum() for x in data.xs)), "num_samples": a.num_samples}


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        verbs = {"collect": cmd_collect, "train": cmd_train, "eval": cmd_eval, "score": cmd_score, "plan": cmd_plan,
                 "generate": cmd_generate, "impute": cmd_impute, "latent": cmd_latent}
        result = verbs[a.verb](a)
        if result is not None:  # None: a data-parallel rank other than 0 (rank 0 prints)
            print(result if isinstance(result, str) else json.dumps(result, allow_nan=True))
        return 0
    except KeyboardInterrupt:
        print("dvae: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if a.debug or not _user_error(e):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        who = f"dvae {a.verb}"
        if a.verb == "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1 and "rank" not in msg[:5]:  # under torchrun
            who += f" (rank {os.environ.get('RANK', '?')} of {os.environ['WORLD_SIZE']})"
        print(f"{who}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
