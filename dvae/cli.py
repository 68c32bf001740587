"""The ``dvae`` command: collect, train, eval (see DESIGN.md for the stable contract).

Errors a user can fix are printed as one line on stderr with a non-zero exit status (add --debug for
the traceback); stdout carries only the JSON result.
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


def _add_common(p):
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def build_parser() -> argparse.ArgumentParser:
    from dvae.infer.trainer import TrainConfig
    from dvae.models import ModelConfig
    from dvae.run import DataConfig

    mc, tc, dc = ModelConfig(), TrainConfig(), DataConfig()
    ap = argparse.ArgumentParser(prog="dvae", description="Dynamical VAEs (DMM, VRNN, VRAE) as Pyro programs.")
    sub = ap.add_subparsers(dest="verb", metavar="{collect,train,eval,score,plan,latent}")
    sub.required = True

    p = sub.add_parser("collect", help="collect trajectories from a Gymnasium env into an .npz")
    p.add_argument("--env", required=True, help="Gymnasium env id, e.g. Pendulum-v1")
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--steps", type=int, required=True, help="actions per episode (observations: steps + 1)")
    p.add_argument("--policy", choices=["random", "ou"], default="random",
                   help="uniform random actions, or Ornstein-Uhlenbeck (smooth) for continuous actions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .npz")
    _add_common(p)

    p = sub.add_parser("train", help="fit a model by SVI on the dynamical ELBO")
    p.add_argument("--model", choices=["dmm", "vrnn", "vrae", "lgssm", "vae"], default=mc.model,
                   help="lgssm: the linear-Gaussian baseline with an exact likelihood; "
                        "vae: the static frame-wise baseline (no temporal model)")
    p.add_argument("--data", default=dc.source, help="pendulum (built-in), a trajectory .npz, or a polyphonic pickle")
    p.add_argument("--epochs", type=int, default=None, help=f"total epochs (default {tc.epochs})")
    p.add_argument("--time-limit", type=float, default=None, help="seconds of training")
    p.add_argument("--batch-size", type=int, default=tc.batch_size)
    p.add_argument("--lr", type=float, default=tc.lr)
    p.add_argument("--z-dim", type=int, default=mc.z_dim)
    p.add_argument("--rnn-dim", type=int, default=mc.rnn_dim)
    p.add_argument("--rnn-type", choices=["gru", "lstm", "rnn"], default=mc.rnn_type)
    p.add_argument("--transition-dim", type=int, default=mc.transition_dim)
    p.add_argument("--emission-dim", type=int, default=mc.emission_dim)
    p.add_argument("--guide", choices=["dks", "mean_field"], default=mc.guide, help="DMM guide")
    p.add_argument("--optimizer", choices=["adam", "clipped_adam"], default=tc.optimizer)
    p.add_argument("--clip-norm", type=float, default=tc.clip_norm, help="global gradient-norm clip (0: none)")
    p.add_argument("--kl-start", type=float, default=tc.kl_start, help="KL annealing factor at the first update")
    p.add_argument("--anneal-epochs", type=float, default=tc.anneal_epochs, help="epochs of linear KL warm-up")
    p.add_argument("--free-bits", type=float, default=tc.free_bits, help="nats per latent dim per step")
    p.add_argument("--patience", type=int, default=tc.patience, help="early stopping patience (0: off)")
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
    _add_common(p)

    p = sub.add_parser("eval", help="bounds per time step (and k-step open-loop errors) of a trained run")
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="default: the run's own source")
    p.add_argument("--split", choices=["train", "valid", "test", "all"], default="test")
    p.add_argument("--iw-samples", type=int, default=0, help="K of the importance-weighted bound")
    p.add_argument("--context", type=int, default=None)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=64, help="samples of the predictive distribution")
    p.add_argument("--plots", metavar="DIR", default=None,
                   help="with --horizon: write kstep_errors.png and prediction plots with bands into DIR")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)

    p = sub.add_parser("score", help="anomaly scores per sequence and per time step, with a threshold")
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="default: the run's own source")
    p.add_argument("--split", choices=["train", "valid", "test", "all"], default="test")
    p.add_argument("--iw-samples", type=int, default=0, help="also the K-sample importance-weighted bound")
    p.add_argument("--quantile", type=float, default=0.99,
                   help="threshold: this quantile of neg_elbo_per_step over the run's validation split")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)

    p = sub.add_parser("latent", help="latent codes in 2-D (PCA, t-SNE) coloured by a label; interpolation and "
                                      "traversal of VRAE codes, decoded; PNGs")
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="default: the run's own source")
    p.add_argument("--split", choices=["train", "valid", "test", "all"], default="test")
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
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)

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
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)
    return ap


# --- collect -----------------------------------------------------------------------------------------
def cmd_collect(a) -> dict:
    from envs import collect, save_npz

    if a.episodes < 1 or a.steps < 1:
        raise ValueError("--episodes and --steps must be at least 1")
    data = collect(a.env, a.episodes, a.steps, policy=a.policy, seed=a.seed, progress=True)
    save_npz(a.out, data)
    return {"out": a.out, "env_id": a.env, "episodes": a.episodes, "steps": a.steps, "policy": a.policy,
            "seed": a.seed, "obs_shape": list(data["obs"].shape), "actions_shape": list(data["actions"].shape),
            "num_transitions": int(data["lengths"].sum())}


# --- train -------------------------------------------------------------------------------------------
def _prepare(data, normalizer, split):
    xs, us = data.subset(split)
    return normalizer.x(xs), normalizer.u(us)


def cmd_train(a) -> dict:
    import torch

    from dvae.data import Normalizer
    from dvae.infer.trainer import TrainConfig, resolve_device
    from dvae.models import ModelConfig
    from dvae.run import (DataConfig, RunConfig, load_data, read_config, write_config)

    if a.resume:
        run_dir = a.resume
        config = read_config(run_dir)
        if a.epochs is not None:
            config.train.epochs = a.epochs
        if a.time_limit is not None:
            config.train.time_limit = a.time_limit
        data = load_data(config)
        normalizer = config.normalizer
    else:
        if a.epochs is not None and a.epochs < 1:
            raise ValueError("--epochs must be at least 1")
        data_cfg = DataConfig(source=a.data, episodes=a.episodes, steps=a.steps, data_seed=a.seed)
        run_dir = a.out or os.path.join("runs", f"{a.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        if os.path.exists(os.path.join(run_dir, "config.json")):
            raise ValueError(f"{run_dir}: already holds a run (use --resume {run_dir}, or another --out)")
        config = RunConfig(data=data_cfg)
        data = load_data(config)
        train_xs, train_us = data.subset("train")
        normalizer = Normalizer.fit(train_xs, train_us, standardize=data.kind == "continuous")
        config.normalizer, config.kind = normalizer, data.kind
        config.model = ModelConfig(model=a.model, x_dim=data.x_dim, u_dim=data.u_dim, z_dim=a.z_dim,
                                   rnn_dim=a.rnn_dim, rnn_type=a.rnn_type, transition_dim=a.transition_dim,
                                   emission_dim=a.emission_dim, guide=a.guide,
                                   likelihood="bernoulli" if data.kind == "binary" else "gaussian")
        config.train = TrainConfig(epochs=a.epochs or TrainConfig.epochs, time_limit=a.time_limit,
                                   batch_size=a.batch_size, lr=a.lr, optimizer=a.optimizer, clip_norm=a.clip_norm,
                                   kl_start=a.kl_start, anneal_epochs=a.anneal_epochs, free_bits=a.free_bits,
                                   patience=a.patience, seed=a.seed, device=a.device, vectorized=not a.per_step,
                                   bucket=not a.no_bucket)
        os.makedirs(run_dir, exist_ok=True)
        write_config(run_dir, config)

    device = resolve_device(config.train.device)
    # ReLU-RNN gradients decaying into denormals slow CPU training (docs/performance.md); the flag is
    # process-wide, so it is switched off again when training returns
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        return _train(a, config, data, normalizer, run_dir, device)
    finally:
        if flush:
            torch.set_flush_denormal(False)


def _train(a, config, data, normalizer, run_dir, device) -> dict:
    import pyro

    from dvae.infer.trainer import Trainer
    from dvae.models import build_model
    from dvae.run import BEST, CHECKPOINT, load_torch, save_torch

    pyro.set_rng_seed(config.train.seed)
    model = build_model(config.model).to(device)
    trainer = Trainer(model, config.train, _prepare(data, normalizer, "train"), _prepare(data, normalizer, "valid"),
                      normalizer.log_det_per_step, device)
    ckpt_path, _best_path = os.path.join(run_dir, CHECKPOINT), os.path.join(run_dir, BEST)
    if a.resume:
        trainer.load_checkpoint(load_torch(ckpt_path, device))
        _write_derived(run_dir, trainer)  # repair metrics.jsonl and best.pt after a kill at any moment
    else:  # from the first moment on, the run directory can be evaluated and resumed
        save_torch(ckpt_path, trainer.checkpoint())

    def on_epoch(row, improved):
        save_torch(ckpt_path, trainer.checkpoint())  # the one file that restores the run, written first
        _write_derived(run_dir, trainer, best=improved)
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
        trainer.fit(on_epoch, progress=not a.no_progress and sys.stderr.isatty())
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    if trainer.stopped:
        save_torch(ckpt_path, trainer.checkpoint())
    summary = {"run_dir": run_dir, "model": config.model.model, "data": config.data.source,
               "epochs": trainer.state["epoch"], "best_epoch": trainer.state["best_epoch"],
               "best_valid_neg_elbo_per_step": trainer.state["best_valid"],
               "train_seconds": trainer.state["train_seconds"], "skipped_updates": trainer.state["skipped_updates"],
               "faults": trainer.state["faults"], "interrupted": trainer.stopped}
    if trainer.stopped:
        print(json.dumps(summary))
        print(f"dvae train: interrupted; continue with: dvae train --resume {run_dir}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED)
    if trainer.best_model is None:
        raise RuntimeError("no epoch completed (is the time limit too short?)")
    model.load_state_dict(trainer.best_model)
    summary["plots"] = write_train_plots(run_dir, model, config, data, normalizer, trainer.rows)
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
    xs, us = data.subset("test")
    i = int(np.argmax([len(x) for x in xs]))
    x, u = xs[i][:400], None if us is None else us[i][:400]
    batch = collate([torch.from_numpy(normalizer.x([x])[0])],
                    None if u is None else [torch.from_numpy(normalizer.u([u])[0])]).to(model.device)
    torch.manual_seed(config.train.seed)
    rec = model.reconstruct(batch, num_samples=32)["x_mean"][:, 0]  # (S, L, x_dim)
    rec = normalizer.x_inverse(rec).cpu().numpy()
    path = os.path.join(run_dir, "reconstruction.png")
    plot_reconstructions(x, rec.mean(0), np.quantile(rec, 0.05, 0), np.quantile(rec, 0.95, 0), path,
                         binary=config.kind == "binary")
    written.append(path)
    if config.kind == "continuous" and len(x) >= 4:
        context = max(2, len(x) // 3)
        horizon = len(x) - context
        w = predict_windows(model, normalizer, [x], None if u is None else [u], context, horizon, num_samples=64)
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
    from dvae.infer.trainer import evaluate, resolve_device
    from dvae.run import load_data, load_model

    device = resolve_device(a.device)
    model, config = load_model(a.run_dir, device)
    data = load_data(config, a.data)
    _check_dims(data, config)
    norm = config.normalizer
    xs, us = data.subset(a.split)
    if not xs:
        raise ValueError(f"{data.source}: split {a.split!r} is empty")
    if a.iw_samples < 0:
        raise ValueError("--iw-samples must be >= 0")
    pyro.set_rng_seed(a.seed)
    out = {"run_dir": a.run_dir, "model": config.model.model, "data": data.source, "split": a.split}
    out.update(evaluate(model, norm.x(xs), norm.u(us), norm.log_det_per_step, config.train.eval_batch_size,
                        iw_samples=a.iw_samples, device=device))
    if getattr(model, "exact", False):  # the bound is the exact log-likelihood
        out["nll_exact_per_step"] = out["neg_elbo_per_step"]
    if (a.context is None) != (a.horizon is None):
        raise ValueError("--context and --horizon go together")
    if a.horizon is not None:
        if a.context < 1 or a.horizon < 1:
            raise ValueError("--context and --horizon must be at least 1")
        train_xs, train_us = data.subset("train")
        try:
            out.update(kstep_report(model, norm, xs, us, train_xs, train_us, a.context, a.horizon, a.num_samples,
                                    plot_dir=a.plots))
        except ValueError as e:  # e.g. no sequence as long as context + horizon
            raise DataError(f"{data.source}: split {a.split}: {e}") from None
    return out


# --- score -------------------------------------------------------------------------------------------
def cmd_score(a):
    import pyro

    from dvae.infer.scores import sequence_scores, threshold_from
    from dvae.infer.trainer import resolve_device
    from dvae.run import load_data, load_model

    if not 0 < a.quantile < 1:
        raise ValueError("--quantile must lie strictly between 0 and 1")
    if a.iw_samples < 0:
        raise ValueError("--iw-samples must be >= 0")
    model, config = load_model(a.run_dir, resolve_device(a.device))
    data = load_data(config, a.data)
    _check_dims(data, config)
    norm = config.normalizer
    pyro.set_rng_seed(a.seed)
    idx = data.indices(a.split)
    xs, us = data.subset(a.split)
    scores = sequence_scores(model, norm.x(xs), norm.u(us), norm.log_det_per_step, a.iw_samples)
    reference = load_data(config) if a.data else data  # the threshold comes from the run's own validation split
    vx, vu = reference.subset("valid")
    pyro.set_rng_seed(a.seed)  # the same draws as the scores above, where they score the same sequences
    valid_scores = sequence_scores(model, norm.x(vx), norm.u(vu), norm.log_det_per_step)
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
    from dvae.infer.trainer import resolve_device
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
    from dvae.infer.trainer import resolve_device
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
    returns = run_episodes(a.env, model_policy(model, config.normalizer, reward, a.planner, pc, a.seed, a.history),
                           a.episodes, a.seed, a.max_steps)
    out = {"run_dir": a.run_dir, "env": a.env, "planner": a.planner, "episodes": a.episodes,
           "mean_return": float(np.mean(returns)), "returns": returns, "seconds": time.perf_counter() - t0,
           "baselines": {}}
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


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        from dvae.errors import DvaeError

        verbs = {"collect": cmd_collect, "train": cmd_train, "eval": cmd_eval, "score": cmd_score, "plan": cmd_plan,
                 "latent": cmd_latent}
        result = verbs[a.verb](a)
        print(result if isinstance(result, str) else json.dumps(result, allow_nan=True))
        return 0
    except KeyboardInterrupt:
        print("dvae: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DvaeError, ValueError, RuntimeError, FloatingPointError, OSError) as e:
        if a.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"dvae {a.verb}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
