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
import sys
import time

import numpy as np

from dvae.flags import finite_float

EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 141  # 141 = 128 + SIGPIPE, as a shell reports it
MAX_ERROR_CHARS = 500
"""Error lines are cut to this many characters (a hostile file name or value cannot flood the terminal)."""


def _user_error(e: BaseException) -> bool:
    """Whether ``e`` is something a user can fix (bad input, flags or files, a diverged run, memory),
    reported in one line; anything else (a RuntimeError from torch, a TypeError, ...) is a bug, and its
    traceback is shown as it is."""
    from dvae.errors import DvaeError

    return isinstance(e, (DvaeError, ValueError, FloatingPointError, OSError, MemoryError)) or \
        type(e).__name__ == "OutOfMemoryError" or _allocator_error(e)


def _allocator_error(e: BaseException) -> bool:
    """torch's CPU allocator reports a failed allocation as a RuntimeError: memory, not a bug."""
    return isinstance(e, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(e)


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
    from dvae import __version__

    ap = argparse.ArgumentParser(prog="dvae", description="Dynamical VAEs (DMM, VRNN, VRAE) as Pyro programs.")
    ap.add_argument("--version", action="version", version=f"dvae {__version__}")
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
    ap.verb_parsers = sub.choices  # verb -> its parser (read by _refuse_resume_flags)
    p.add_argument("--model", choices=list(MODELS), default=mc.model,
                   help="lgssm: the linear-Gaussian baseline with an exact likelihood; "
                        "vae: the static frame-wise baseline (no temporal model)")
    p.add_argument("--data", default=None, help=f"{dc.source} (built-in, the default), a trajectory .npz, a CSV table "
                   "(a header row, an episode column, action*/u_* control columns), a .npy array of observations, a "
                   "polyphonic pickle, or a text file (*.txt or text:PATH, one token sequence per line); with --resume: "
                   "read the run's data from here (it moved or changed), recorded in its config.json")
    p.add_argument("--missing", choices=["none", "nan"], default=dc.missing,
                   help="nan: NaN entries of the observations are missing (masked), not bad input")
    p.add_argument("--tokens", choices=["words", "chars"], default=dc.tokens,
                   help="text data: a line's tokens are its whitespace-separated words, or its characters")
    p.add_argument("--min-count", type=int, default=dc.min_count,
                   help="text data: training tokens seen fewer times map to <unk>")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"total epochs (default: with --time-limit none, the limit or convergence ends training; "
                        f"without it {DEFAULT_EPOCHS})")
    p.add_argument("--time-limit", type=finite_float, default=None, help="seconds of training (default: no limit)")
    p.add_argument("--batch-size", type=int, default=tc.batch_size)
    p.add_argument("--lr", type=finite_float, default=None,
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
    p.add_argument("--lr-decay", type=finite_float, default=tc.lr_decay,
                   help="clipped_adam: learning-rate decay per update (1: none)")
    p.add_argument("--clip-norm", type=finite_float, default=tc.clip_norm, help="global gradient-norm clip (0: none)")
    p.add_argument("--kl-start", type=finite_float, default=tc.kl_start, help="KL annealing factor at the first update")
    p.add_argument("--anneal-epochs", type=finite_float, default=tc.anneal_epochs, help="epochs of linear KL warm-up")
    p.add_argument("--free-bits", type=finite_float, default=tc.free_bits,
                   help="nats per latent dim per step (rssm: PlaNet's free nats F are F / z-dim)")
    p.add_argument("--kl-balance", type=finite_float, default=mc.kl_balance,
                   help="rssm: KL balancing weight alpha in [0, 1) on the prior's side (DreamerV2: 0.8; 0: off)")
    p.add_argument("--beta", type=finite_float, default=tc.beta,
                   help="weight on the KL (beta-VAE; 1: the ELBO); multiplies the annealing factor")
    p.add_argument("--collapse-kl", type=finite_float, default=tc.collapse_kl,
                   help="posterior-collapse warning: validation KL per step (nats) counted as collapsed")
    p.add_argument("--collapse-epochs", type=int, default=tc.collapse_epochs,
                   help="posterior-collapse warning: consecutive collapsed epochs before it warns")
    p.add_argument("--bidirectional", action="store_true",
                   help="bidirectional encoder RNN (vrae; dmm guide: q(z_t | z_{t-1}, x_{1:T}))")
    p.add_argument("--emission-scale", choices=["constant", "state"], default=mc.emission_scale,
                   help="Gaussian observation scale: one learned per dimension (constant) or read from the "
                        "state with the mean (state: from z_t; vrnn: from (z_t, h_{t-1}))")
    p.add_argument("--vrae-decoder", choices=["controls", "feedback"], default=mc.vrae_decoder,
                   help="vrae: decoder fed the controls only (controls) or also its previous output and z at "
                        "every step (feedback, the seeds' form; teacher forcing in training)")
    p.add_argument("--rvae-noncausal", action="store_true",
                   help="rvae: x_t from a bidirectional RNN over all of z (no predict, plan or particle filter)")
    p.add_argument("--kvae-components", type=int, default=mc.kvae_components,
                   help="kvae: K, the linear-Gaussian systems its RNN mixes")
    p.add_argument("--kvae-state-dim", type=int, default=mc.kvae_state_dim,
                   help="kvae: dimension of the linear-Gaussian state under the codes (0: 2 z-dim)")
    p.add_argument("--condition", action="store_true",
                   help="conditional vrae/dmm on the .npz's per-sequence 'cond' (N, c_dim) or 'labels' (N,) (one-hot)")
    p.add_argument("--patience", type=int, default=tc.patience,
                   help=f"early stopping: epochs (and --plateau-updates updates) without a better validation "
                        f"bound once the learning-rate schedule has reached --min-lr (0: never stop early) "
                        f"(default {tc.patience})")
    p.add_argument("--lr-schedule", choices=["plateau", "none"], default=tc.lr_schedule,
                   help=f"plateau: multiply the rate by --lr-factor after --lr-patience epochs without a better "
                        f"validation bound, down to --min-lr; none: a constant rate (default {tc.lr_schedule})")
    p.add_argument("--lr-factor", type=finite_float, default=tc.lr_factor,
                   help=f"plateau schedule: factor on the rate at each reduction, in (0, 1) (default {tc.lr_factor:g})")
    p.add_argument("--lr-patience", type=int, default=tc.lr_patience,
                   help=f"plateau schedule: epochs without improvement before a reduction (default {tc.lr_patience})")
    p.add_argument("--plateau-updates", type=int, default=tc.plateau_updates,
                   help="the fewest updates without a better validation bound before a reduction of the rate, "
                        "and at the floor before early stopping, besides the epochs (0: epochs alone) "
                        f"(default {tc.plateau_updates})")
    p.add_argument("--min-lr", type=finite_float, default=tc.min_lr,
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
    p.add_argument("--dist-timeout", type=finite_float, default=None, metavar="SECONDS",
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
    p.add_argument("--quantile", type=finite_float, default=0.99,
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
    p.add_argument("--span", type=finite_float, default=2.0, help="traversal: prior standard deviations either side of 0")
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
    names = [f"shard-{k:05d}.npz" for k in range(a.shards)]
    for name in names:  # never replaced (left by a collect that was stopped?); checked again as each is written
        if os.path.lexists(os.path.join(a.out, name)):
            raise ValueError(f"{os.path.join(a.out, name)}: already exists (left by an earlier collect?); remove "
                             "it or choose another --out")
    os.makedirs(a.out, exist_ok=True)
    bounds = np.linspace(0, a.episodes, a.shards + 1).round().astype(int)
    shards, transitions = [], 0
    for k in range(a.shards):
        first, n = int(bounds[k]), int(bounds[k + 1] - bounds[k])
        data = collect(a.env, n, a.steps, policy=a.policy, seed=a.seed, first_episode=first)
        data["first_episode"] = np.array(first, np.int64)
        name = names[k]
        save_npz(os.path.join(a.out, name), data, replace=False)
        shards.append({"file": name, "episodes": n, "first_episode": first})
        transitions += int(data["lengths"].sum())
        print(f"dvae collect: {name}: episodes {first}..{first + n - 1}", file=sys.stderr, flush=True)
    manifest = write_manifest(a.out, shards, {"env_id": a.env, "steps": a.steps, "policy": a.policy, "seed": a.seed})
    return {"out": a.out, "manifest": manifest, "shards": a.shards, "env_id": a.env, "episodes": a.episodes,
            "steps": a.steps, "policy": a.policy, "seed": a.seed, "obs_shape": [a.episodes] + list(data["obs"].shape[1:]),
            "actions_shape": [a.episodes] + list(data["actions"].shape[1:]), "num_transitions": transitions}


# --- train -------------------------------------------------------------------------------------------
def cmd_train(a, argv=None) -> dict:
    """Train a new run or resume one (``dvae.fitting.train``); SIGINT/SIGTERM stop it after a checkpoint.
    ``argv``: the command line, to refuse train flags that --resume would ignore."""
    from dvae.fitting import Interrupted, default_run_dir, train

    if a.resume:
        _refuse_resume_flags(a, argv)
    elif not a.out:
        a.out = default_run_dir(a.model)
    try:
        return train(a, signals=True).summary
    except Interrupted as e:
        if e.summary is not None:  # rank 0 prints
            print(json.dumps({"plots": [], **e.summary}))
            print(f"dvae train: interrupted; continue with: dvae train --resume {e.summary['run_dir']}",
                  file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED)


# the train flags --resume takes; the others are the run's, fixed in its config.json
RESUME_FLAGS = ("epochs", "time_limit", "data", "no_progress", "no_plots", "dist_timeout")


def _refuse_resume_flags(a, argv) -> None:
    """Refuse train flags that --resume would ignore (the run keeps its config.json): those given on the
    command line ``argv``, found by parsing it again with every default replaced by a marker; without
    ``argv`` (a namespace built in Python), those that differ from their defaults."""
    unset = object()
    parser = build_parser()
    train = parser.verb_parsers["train"]
    if argv is not None:
        train.set_defaults(**{k: unset for k in vars(a)})
        given = {k for k, v in vars(parser.parse_args(list(argv))).items() if v is not unset}
    else:
        given = {k for k, v in vars(a).items() if v != train.get_default(k)}
    ignored = sorted(given - set(RESUME_FLAGS) - {"verb", "resume", "debug"})
    if ignored:
        flags = ", ".join("--" + k.replace("_", "-") for k in ignored)
        raise ValueError(f"--resume continues {a.resume} as its config.json says: {flags} cannot change it "
                         f"(with --resume: {', '.join('--' + k.replace('_', '-') for k in RESUME_FLAGS)})")


def _check_dims(data, config) -> None:
    """Refuse data whose dimensions differ from the run's model, naming the file."""
    if data.x_dim != config.model.x_dim or data.u_dim != config.model.u_dim:
        raise ValueError(f"{data.source}: x_dim {data.x_dim}, u_dim {data.u_dim} do not match the run's model "
                         f"(x_dim {config.model.x_dim}, u_dim {config.model.u_dim})")


def _check_samples(flag: str, k: int, config, xs, batch_size: int, num_steps: int = 0) -> None:
    """Refuse a sample count whose tensors, about k x batch x T x (the model's widths) floats, would
    exceed the size limit (DVAE_MAX_BYTES), before any is drawn."""
    from dvae.inputs import check_bytes
    from dvae.data.batching import sequence_lengths

    if k <= 0:
        return
    m = config.model
    width = m.x_dim + m.u_dim + 2 * m.z_dim + m.rnn_dim + m.transition_dim + m.emission_dim
    T = max(sequence_lengths(xs)) if xs is not None and len(xs) else num_steps
    b = min(batch_size, len(xs)) if xs is not None and len(xs) else batch_size
    check_bytes(4 * k * b * max(T, 1) * width, f"{k} samples ({b} sequences x {T} steps x {width} floats each)",
                f"--{flag}")


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
    _check_samples("iw-samples", a.iw_samples, config, xs, config.train.eval_batch_size)
    _check_samples("particles", a.particles, config, xs, 1)
    _check_samples("num-samples", a.num_samples, config, xs, 1)
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
            from dvae.eval.names import action_names, obs_names

            names = dict(dim_names=obs_names(data.meta, config.model.x_dim, config.data.source),
                         control_names=action_names(data.meta, config.model.u_dim, config.data.source))
            out.update(kstep_report(model, norm, xs, us, train_xs, train_us, a.context, a.horizon, a.num_samples,
                                    plot_dir=a.plots, cs=cs, **names))
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
    _check_samples("iw-samples", a.iw_samples, config, xs, 64)
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
    _check_samples("num-samples", a.num_samples, config, None, 1, a.steps)
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
    from dvae.files import atomic_write
    from dvae.run import load_model

    if a.num_samples < 1:
        raise ValueError("--num-samples must be at least 1")
    if not a.data.endswith(".npz"):
        raise ValueError(f"{a.data}: impute reads a trajectory .npz")
    model, config = load_model(a.run_dir, resolve_device(a.device))
    if config.kind != "continuous":
        raise ValueError("impute needs a run trained on continuous data")
    if config.data.missing != "nan":  # as eval: NaN is bad input to a run that never saw missing entries
        raise ValueError(f"{a.run_dir}: trained without --missing nan, so its networks never saw a missing entry: "
                         "impute needs a run trained with --missing nan")
    data = load_npz(a.data, missing=True)
    _check_dims(data, config)
    _check_samples("num-samples", a.num_samples, config, data.xs, 1)
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
    atomic_write(a.out, lambda f: np.savez(f, **arrays))
    return {"run_dir": a.run_dir, "data": a.data, "out": a.out, "num_sequences": len(data.xs),
            "num_missing_entries": int(sum(np.isnan(x).sum() for x in data.xs)), "num_samples": a.num_samples}


def _non_finite_at(obj, where="result"):
    """The place of the first NaN or infinity in a JSON-able result, or None."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return where
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _non_finite_at(v, f"{where}.{k}" if where != "result" else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _non_finite_at(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _strict_json(result) -> str:
    """The result as standard JSON: a NaN or infinity (which JSON has no number for) is an error naming
    its key, never printed as the non-standard NaN/Infinity with exit status 0."""
    try:
        return json.dumps(result, allow_nan=False)
    except ValueError:
        where = _non_finite_at(result) or "the result"
        raise FloatingPointError(f"{where} is not a finite number: the data or the model overflowed "
                                 "(no JSON printed)") from None


def main(argv=None) -> int:
    try:
        a = build_parser().parse_args(argv)  # imports torch: seconds in which a Ctrl-C may come
    except KeyboardInterrupt:
        print("dvae: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        verbs = {"collect": cmd_collect, "train": lambda a: cmd_train(a, sys.argv[1:] if argv is None else argv),
                 "eval": cmd_eval, "score": cmd_score, "plan": cmd_plan, "generate": cmd_generate,
                 "impute": cmd_impute, "latent": cmd_latent}
        if not 0 <= getattr(a, "seed", 0) < 2 ** 32:  # numpy's and Gymnasium's range, checked before any work
            raise ValueError(f"--seed = {a.seed}: expected in 0..4294967295 (2**32 - 1)")
        result = verbs[a.verb](a)
        if result is not None:  # None: a data-parallel rank other than 0 (rank 0 prints)
            print(result if isinstance(result, str) else _strict_json(result))
            sys.stdout.flush()
        return 0
    except BrokenPipeError:  # the reader of stdout (e.g. `| head`) has gone: end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush goes nowhere
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("dvae: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if a.debug or not _user_error(e):
            raise
        msg = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        if "DefaultCPUAllocator" in msg:  # "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: ..."
            msg = msg[msg.index("DefaultCPUAllocator"):]
        if isinstance(e, MemoryError) or _allocator_error(e) or type(e).__name__ == "OutOfMemoryError":
            msg = f"out of memory ({msg}): the data or the sizes asked for need more memory than there is"
        if len(msg) > MAX_ERROR_CHARS:
            msg = msg[:MAX_ERROR_CHARS - 3] + "..."
        who = f"dvae {a.verb}"
        if a.verb == "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1 and "rank" not in msg[:5]:  # under torchrun
            who += f" (rank {os.environ.get('RANK', '?')} of {os.environ['WORLD_SIZE']})"
        print(f"{who}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
