"""Fault detection on Pendulum-v1 with per-step anomaly scores from `dvae score`.

A model trained on clean trajectories scores every time step of new ones by its negative ELBO (the
reconstruction error plus the KL of that step, in nats, from `dvae score`); steps scoring above a
threshold set on clean validation data are flagged. Two faults are injected into clean test
trajectories, each over one segment of ``--segment`` observation steps s .. s+L-1 at a random place
inside the scored window:

- stuck sensor: observation dimension ``--stuck-dim`` (default 2, the angular velocity) holds its
  last good reading x_{s-1} over the segment; the pendulum itself moves on;
- actuator offset: the torque applied to the simulator (Gymnasium's Pendulum-v1, re-run from the
  episode's reset seed) is the logged control plus ``--offset`` N m (clipped to the action bounds)
  for the actions u_{s-1} .. u_{s+L-2} that drive x_s .. x_{s+L-1}; the logged controls are unchanged.

Scored window: steps ``--burn-in`` .. T-1. The first steps and the last one are left out of
flagging and of every rate: there the per-step score of a DMM is large on clean data too (step 0
carries the KL of the initial state against its broad prior; at the last step the backward RNN of
the guide has no future to read), so a threshold over all steps would be set by these edges alone.

Measured (results.json, printed), at the threshold of ``--quantile`` and for each of ``SWEEP``:

- ``detection_rate``: fraction of faulty segments with at least one flagged step inside the segment;
- ``step_recall``: fraction of faulty steps flagged;
- ``false_alarm_rate``: fraction of the steps of the clean test trajectories flagged (the same
  episodes as the faulty ones, before injection); ``false_alarm_rate_outside_segments`` the same on
  the faulty trajectories' steps outside their segment;
- ``chance_detection_rate``: the detection rate of flagging steps at random at the false-alarm
  rate, 1 - (1 - false_alarm_rate)^L: a detection rate near it means the fault does not stand out;
- ``sequence_flag_rate``: fraction of sequences `dvae score` flags as anomalous (their mean score
  above the sequence-level threshold).

The threshold is the ``--quantile`` of the per-step scores of the scored window over the
validation split of the training data (clean; `dvae score RUN --split valid`), so about
1 - quantile of clean steps are flagged if the test data behave like the validation data.

    python examples/anomaly_pendulum.py                # ~3 minutes on 2 CPU cores
    python examples/anomaly_pendulum.py --quick        # a smoke run: seconds, meaningless numbers

Writes into ``--out``: train.npz, test.npz (with ``fault_kind`` and ``fault_mask`` arrays), the run
directory run/, scores.json and valid_scores.json (the outputs of `dvae score`), results.json and
anomaly_scores.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import dvae  # noqa: E402
from dvae.files import save_figure, write_json  # noqa: E402
from envs import OUPolicy, collect, save_npz  # noqa: E402

KINDS = ("clean", "stuck sensor", "actuator offset")
SWEEP = (0.9, 0.95, 0.99)  # threshold quantiles also reported


@dataclass
class Args:
    out: str = "runs/anomaly-pendulum"
    """working directory for the data, the run, the scores and the figure"""
    model: str = "dmm"
    """model family trained on clean data (any `dvae train --model`)"""
    episodes: int = 128
    """clean training episodes (80/10/10 train/valid/test split by `dvae train`)"""
    steps: int = 64
    """actions per episode (observations: steps + 1)"""
    test_episodes: int = 32
    """clean test episodes; each also appears once with each fault"""
    epochs: int = 60
    """training epochs"""
    burn_in: int = 3
    """first observation steps left out of flagging and of the rates (the last step is left out too)"""
    segment: int = 10
    """observation steps per faulty segment"""
    stuck_dim: int = 2
    """observation dimension of the stuck sensor (0 cos theta, 1 sin theta, 2 theta dot)"""
    offset: float = 1.0
    """actuator offset added to the applied torque, N m (the action space is [-2, 2])"""
    quantile: float = 0.95
    """threshold: this quantile of the validation split's per-step scores (scored window)"""
    seed: int = 0
    """seed of the training data, the model, the test episodes and the fault placement"""
    quick: bool = False
    """smoke mode: tiny data and model, one epoch"""


def parse_args(argv=None) -> Args:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(Args):
        if f.type in (bool, "bool"):
            ap.add_argument(f"--{f.name.replace('_', '-')}", action="store_true")
        else:
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = Args(**vars(ap.parse_args(argv)))
    if args.quick:
        args.episodes, args.steps, args.test_episodes, args.epochs, args.segment = 16, 24, 4, 1, 6
    if not 1 <= args.burn_in <= args.steps - args.segment:
        raise SystemExit("--burn-in must lie in 1 .. steps - segment")
    return args


# --- fault injection -----------------------------------------------------------------------------
def simulate(reset_seed: int, actions: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Pendulum-v1 from ``reset(seed=reset_seed)`` under applied torques clip(actions + offset):
    observations (T+1, 3). ``actions``, ``offset``: (T, 1)."""
    env = gym.make("Pendulum-v1")
    low, high = env.action_space.low, env.action_space.high
    obs = [env.reset(seed=reset_seed)[0]]
    for a, o in zip(actions, offset):
        obs.append(env.step(np.clip(a + o, low, high).astype(np.float32))[0])
    env.close()
    return np.stack(obs).astype(np.float32)  # (T+1, 3)


def stuck_sensor(obs: np.ndarray, start: int, length: int, dim: int) -> np.ndarray:
    """``obs`` (T+1, obs_dim) with dimension ``dim`` holding x_{start-1} over steps start .. start+length-1."""
    out = obs.copy()
    out[start:start + length, dim] = obs[start - 1, dim]
    return out


def make_test_set(args: Args, rng: np.random.Generator) -> dict:
    """Clean episodes and, for each, one with a stuck sensor and one with an actuator offset:
    ``obs`` (3N, T+1, 3), ``actions`` (3N, T, 1), ``fault_kind`` (3N,) (index into KINDS),
    ``fault_mask`` (3N, T+1) true on the faulty observation steps, ``reset_seed`` (3N,)."""
    space = gym.make("Pendulum-v1").action_space
    policy = OUPolicy(space, rng)  # smooth random torques, as in the training data
    T, L = args.steps, args.segment
    rows = {"obs": [], "actions": [], "fault_kind": [], "fault_mask": [], "reset_seed": []}
    for i in range(args.test_episodes):
        policy.reset()
        actions = np.stack([policy() for _ in range(T)]).astype(np.float32)  # (T, 1), logged
        reset_seed = 10_000 + args.seed * 1_000 + i  # not a training episode's seed
        clean = simulate(reset_seed, actions, np.zeros_like(actions))
        for kind in range(3):
            start = int(rng.integers(args.burn_in, T + 1 - L))  # start .. start+L-1 within burn_in .. T-1
            mask = np.zeros(T + 1, bool)
            if kind == 0:
                obs = clean
            else:
                mask[start:start + L] = True
            if kind == 1:
                obs = stuck_sensor(clean, start, L, args.stuck_dim)
            elif kind == 2:  # u_{start-1} .. u_{start+L-2} drive x_start .. x_{start+L-1}
                offset = np.zeros_like(actions)
                offset[start - 1:start - 1 + L] = args.offset
                obs = simulate(reset_seed, actions, offset)
            for key, value in zip(rows, (obs, actions, kind, mask, reset_seed)):
                rows[key].append(value)
    out = {k: np.stack(v) for k, v in rows.items()}
    out.update(action_low=space.low.astype(np.float32), action_high=space.high.astype(np.float32),
               env_id=np.array("Pendulum-v1"))
    return out


# --- metrics -------------------------------------------------------------------------------------
def rates(per_step: np.ndarray, threshold: float, kind: np.ndarray, mask: np.ndarray, scored: np.ndarray,
          sequence_flags: np.ndarray) -> dict:
    """Detection and false-alarm rates from per-step scores (N, T+1) against ``threshold``, counting
    only the steps where ``scored`` (T+1,) is true."""
    flags = (per_step > threshold) & scored  # (N, T+1)
    clean_seq = kind == 0
    outside = ~mask[~clean_seq] & scored  # (n_faulty, T+1)
    out = {"threshold": float(threshold),
           "false_alarm_rate": float(flags[clean_seq].sum() / (clean_seq.sum() * scored.sum())),
           "false_alarm_rate_outside_segments": float(flags[~clean_seq][outside].mean()),
           "sequence_flag_rate": {"clean": float(sequence_flags[clean_seq].mean())}}
    for k in (1, 2):
        sel = kind == k
        seg_flags = flags[sel] & mask[sel]  # (n, T+1)
        out[KINDS[k]] = {"detection_rate": float(seg_flags.any(1).mean()),
                         "step_recall": float(seg_flags.sum() / mask[sel].sum()),
                         "num_segments": int(sel.sum())}
        out["sequence_flag_rate"][KINDS[k]] = float(sequence_flags[sel].mean())
    faulty = kind > 0
    out["detection_rate"] = float((flags[faulty] & mask[faulty]).any(1).mean())
    out["step_recall"] = float((flags[faulty] & mask[faulty]).sum() / mask[faulty].sum())
    # what flagging each step at random, at the false-alarm rate, would detect: 1 - (1 - rate)^L
    out["chance_detection_rate"] = float(1 - (1 - out["false_alarm_rate"]) ** mask[faulty].sum(1).mean())
    return out


def plot(per_step, threshold, kind, mask, scored, test, path, episode=0):
    """Per-step scores of one episode, clean and with each fault, the faulty segment shaded (steps
    outside the scored window greyed)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(11, 7), sharex=True, gridspec_kw={"width_ratios": [1, 1.4]})
    for k in range(3):
        row = 3 * episode + k
        assert kind[row] == k
        steps = np.arange(per_step.shape[1])
        ax_obs, ax = axes[k]
        clean = test["obs"][3 * episode]
        ax_obs.plot(steps, clean[:, 2], color="0.6", lw=1, label="clean")
        ax_obs.plot(steps, test["obs"][row][:, 2], color="C0", lw=1.2, label="observed")
        ax_obs.set_ylabel("theta dot (rad/s)")
        ax.plot(steps, per_step[row], color="k", lw=1.2, label="per-step -ELBO")
        ax.axhline(threshold, color="C3", ls="--", lw=1, label="step threshold")
        flagged = (per_step[row] > threshold) & scored
        ax.plot(steps[flagged], per_step[row][flagged], "o", color="C3", ms=4, label="flagged")
        for a in (ax_obs, ax):
            if mask[row].any():
                idx = np.flatnonzero(mask[row])
                a.axvspan(idx[0] - 0.5, idx[-1] + 0.5, color="C1", alpha=0.25, lw=0)
        for lo, hi in ((-0.5, np.flatnonzero(scored)[0] - 0.5), (np.flatnonzero(scored)[-1] + 0.5, len(steps) - 0.5)):
            ax.axvspan(lo, hi, color="0.85", lw=0)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.yaxis.set_major_locator(matplotlib.ticker.SymmetricalLogLocator(base=10, linthresh=1.0))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # 1, 10, 100: no 10^x
        ax.set_ylabel("anomaly score:\nper-step -ELBO (nats)")
        ax.set_title(f"{KINDS[k]}", fontsize=10)
        if k == 0:
            ax.legend(fontsize=8, loc="upper left")
            ax_obs.legend(fontsize=8, loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("time step")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle(f"test episode {episode}: faulty segment shaded (orange), unscored edges grey")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)  # atomic, never through a symlink at path
    plt.close(fig)
    return fig


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    small = dict(z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8) if args.quick else {}

    # --- data: clean training episodes, and clean + faulty test episodes ---
    train_npz, test_npz, run = (os.path.join(args.out, n) for n in ("train.npz", "test.npz", "run"))
    save_npz(train_npz, collect("Pendulum-v1", args.episodes, args.steps, policy="ou", seed=args.seed))  # dvae collect
    test = make_test_set(args, rng)
    save_npz(test_npz, test)

    # --- train on clean data (the threshold comes from its validation split) ---
    if os.path.exists(os.path.join(run, "config.json")):
        model = dvae.load(run)
    else:  # dvae train --model M --data TRAIN_NPZ --out RUN ...
        model = dvae.fit(train_npz, model=args.model, epochs=args.epochs, seed=args.seed, no_progress=True, out=run,
                         **small)

    # --- score every step: the validation split (clean, for the threshold) and the test set (dvae score) ---
    valid = model.score(split="valid", quantile=args.quantile, seed=args.seed)
    scores = model.score(test_npz, split="all", quantile=args.quantile, seed=args.seed)
    for name, value in (("valid_scores.json", valid), ("scores.json", scores)):
        write_json(os.path.join(args.out, name), value, indent=None)
    T1 = args.steps + 1
    scored = (np.arange(T1) >= args.burn_in) & (np.arange(T1) < T1 - 1)  # (T+1,): the scored window
    valid_steps = np.concatenate([np.asarray(s["per_step"])[scored[:len(s["per_step"])]] for s in valid["sequences"]])
    per_step = np.array([s["per_step"] for s in scores["sequences"]])  # (N, T+1)
    seq_flags = np.array([s["anomalous"] for s in scores["sequences"]])
    assert [s["index"] for s in scores["sequences"]] == list(range(len(per_step))) and per_step.shape[1] == T1

    # --- detection and false alarms, at the threshold of --quantile and across SWEEP ---
    def at(q):
        return rates(per_step, float(np.quantile(valid_steps, q)), test["fault_kind"], test["fault_mask"], scored,
                     seq_flags)

    result = {"model": args.model, "epochs": args.epochs, "quantile": args.quantile, "burn_in": args.burn_in,
              "segment": args.segment, "offset": args.offset, "stuck_dim": args.stuck_dim,
              "test_episodes": args.test_episodes, "num_valid_steps": int(len(valid_steps)), **at(args.quantile),
              "sweep": {str(q): {k: v for k, v in at(q).items() if k != "sequence_flag_rate"} for q in SWEEP}}
    threshold = result["threshold"]
    figure = os.path.join(args.out, "anomaly_scores.png")
    plot(per_step, threshold, test["fault_kind"], test["fault_mask"], scored, test, figure)
    result["figure"] = figure
    write_json(os.path.join(args.out, "results.json"), result, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
