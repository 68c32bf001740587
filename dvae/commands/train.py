"""``dvae train``: fit a new run, or continue one (``--resume``), through :func:`dvae.fitting.train`."""

from __future__ import annotations

import argparse
import json
import sys

from dvae.commands.common import EXIT_INTERRUPTED, add_common
from dvae.flags import finite_float


def add_train(sub) -> None:
    from dvae.infer.objectives import OBJECTIVES
    from dvae.infer.trainer import DEFAULT_EPOCHS, DEFAULT_LR, TrainConfig
    from dvae.models import MODELS, ModelConfig, all_guides
    from dvae.run import DataConfig

    mc, tc, dc = ModelConfig(), TrainConfig(), DataConfig()
    p = sub.add_parser("train", help="fit a model by SVI on the dynamical ELBO")
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
    p.add_argument("--batch-size", type=int, default=tc.batch_size, help="sequences per update")
    p.add_argument("--lr", type=finite_float, default=None,
                   help="Adam's learning rate (default: per model, " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
                   + ")")
    p.add_argument("--z-dim", type=int, default=mc.z_dim, help="latent dimensions per step (vrae: per sequence)")
    p.add_argument("--rnn-dim", type=int, default=mc.rnn_dim, help="hidden size of the recurrent networks")
    p.add_argument("--rnn-type", choices=["gru", "lstm", "rnn"], default=mc.rnn_type, help="the recurrent cell")
    p.add_argument("--transition-dim", type=int, default=mc.transition_dim,
                   help="hidden size of the transition network")
    p.add_argument("--emission-dim", type=int, default=mc.emission_dim,
                   help="hidden size of the emission (observation) network")
    p.add_argument("--guide", choices=list(all_guides()), default=mc.guide,
                   help="DMM guide: dks (backward RNN + combiner), mean_field, ltr (forward RNN: filtering) or iaf "
                        "(dks followed by affine autoregressive flows on each step); SRNN guide: dks or resq "
                        "(its mean a residual on the prior's)")
    p.add_argument("--num-iafs", type=int, default=None,
                   help="guide iaf: affine autoregressive transforms per step (default 1)")
    p.add_argument("--iaf-dim", type=int, default=mc.iaf_dim, help="guide iaf: hidden size of each flow's network")
    p.add_argument("--optimizer", choices=["adam", "clipped_adam"], default=tc.optimizer,
                   help="adam, or Pyro's clipped_adam (with --lr-decay)")
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
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=mc.bidirectional,
                   help="bidirectional encoder RNN (vrae; dmm guide: q(z_t | z_{t-1}, x_{1:T}); default: the "
                        "family's, on for the dmm's dks, mean_field and iaf guides, off for ltr and the vrae)")
    p.add_argument("--emission-scale", choices=["constant", "state"], default=mc.emission_scale,
                   help="Gaussian observation scale: one learned per dimension (constant) or read from the "
                        "state with the mean (state: from z_t; vrnn: from (z_t, h_{t-1}))")
    p.add_argument("--vrae-decoder", choices=["controls", "feedback"], default=mc.vrae_decoder,
                   help="vrae: decoder fed the controls only (controls) or also its previous output and z at "
                        "every step (feedback, the seeds' form; teacher forcing in training)")
    p.add_argument("--rvae-noncausal", action="store_true",
                   help="rvae: x_t from a bidirectional RNN over all of z (no predict, plan or particle filter)")
    p.add_argument("--v-dim", type=int, default=mc.v_dim,
                   help="dsae: dimension of the static code v of a sequence (0: z-dim)")
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
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=tc.device,
                   help="where training runs (auto: cuda when there is one)")
    p.add_argument("--seed", type=int, default=tc.seed,
                   help="seeds everything: parameters, batch order, samples, and a built-in source's data")
    p.add_argument("--out", default=None, help="run directory (default runs/MODEL-TIMESTAMP)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue a run to --epochs total")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true",
                   help="skip the PNGs written after training (training curves, reconstruction, prediction)")
    p.add_argument("--dist-timeout", type=finite_float, default=None, metavar="SECONDS",
                   help="under torchrun: seconds a collective waits for the other ranks before the run fails "
                        "(default 300)")
    add_common(p)


def cmd_train(a, argv=None) -> dict:
    """Train a new run or resume one (``dvae.fitting.train``); SIGINT/SIGTERM stop it after a checkpoint.
    ``argv``: the command line, to refuse train flags that --resume would ignore."""
    from dvae.fitting import Interrupted, default_run_dir, train

    if a.resume:
        refuse_resume_flags(a, argv)
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


def refuse_resume_flags(a, argv) -> None:
    """Refuse train flags that --resume would ignore (the run keeps its config.json): those given on the
    command line ``argv``, found by parsing it again with every default replaced by a marker; without
    ``argv`` (a namespace built in Python), those that differ from their defaults."""
    unset = object()
    parser = argparse.ArgumentParser(prog="dvae")  # the train verb alone: argv starts with "train"
    sub = parser.add_subparsers(dest="verb")
    add_train(sub)
    train = sub.choices["train"]
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
