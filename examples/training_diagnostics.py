"""Training diagnostics on toy data: beta, free bits and annealing, active units, posterior collapse,
bidirectional guides and conditioning, as markdown tables (the figures of docs/training-diagnostics.md).

    python examples/training_diagnostics.py            # the tables of the doc (a few minutes on 1 CPU core)
    python examples/training_diagnostics.py --smoke    # a seconds-long run of every part (the smoke test)

Stages: arguments; data (two toy sets made here, nothing downloaded); part 1, a VRAE under several
weightings of its KL; part 2, the DMM's backward and bidirectional guides; part 3, a conditional VRAE
and DMM asked for each class.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pyro
import torch

from dvae.infer import PosteriorCollapseWarning
from dvae.infer.evaluation import evaluate
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model


# --- arguments ----------------------------------------------------------------------------------------
@dataclass
class Args:
    epochs: int = 40
    """Epochs of every training run."""
    sequences: int = 96
    """Training sequences of each toy set (a quarter as many again for validation)."""
    seed: int = 0
    """Seed of the data, the parameters and the samples."""


def parse() -> Args:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=Args.epochs)
    ap.add_argument("--sequences", type=int, default=Args.sequences)
    ap.add_argument("--seed", type=int, default=Args.seed)
    ap.add_argument("--smoke", action="store_true", help="1 epoch on 8 sequences: checks that every part runs")
    a = ap.parse_args()
    if a.smoke:
        return Args(epochs=1, sequences=8, seed=a.seed)
    return Args(a.epochs, a.sequences, a.seed)


# --- data ---------------------------------------------------------------------------------------------
def levels_and_slopes(n: int, num_steps: int, rng) -> list:
    """x_t = a + b (t / (T-1) - 1/2) + noise: two factors per sequence (a, b ~ N(0, 1)), noise N(0, 0.1^2).
    A code with two active dimensions explains it."""
    s = np.arange(num_steps) / (num_steps - 1) - 0.5
    ab = rng.standard_normal((n, 2))
    return [(a + b * s + 0.1 * rng.standard_normal(num_steps))[:, None].astype(np.float32) for a, b in ab]


def two_class_ramps(n: int, num_steps: int, rng):
    """Class 0 rises by 2 over the sequence, class 1 falls by 2, each with an offset N(0, 0.5^2) and noise
    N(0, 0.1^2). Returns xs, one-hot cs (n, 2)."""
    labels = np.arange(n) % 2
    t = np.arange(num_steps) / (num_steps - 1)
    xs = [((1 - 2 * k) * 2 * t + rng.normal(0, 0.5) + 0.1 * rng.standard_normal(num_steps))[:, None]
          .astype(np.float32) for k in labels]
    return xs, np.eye(2, dtype=np.float32)[labels]


# --- training -----------------------------------------------------------------------------------------
def fit(model_config: ModelConfig, train, valid, args: Args, **train_kw):
    """Train one model; returns (model, metrics rows, seconds)."""
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    model = build_model(model_config)
    cfg = TrainConfig(epochs=args.epochs, batch_size=16, lr=1e-2, patience=0, seed=args.seed, **train_kw)
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # collapse is reported in the table (first flagged epoch)
        warnings.simplefilter("ignore", PosteriorCollapseWarning)
        rows = Trainer(model, cfg, train, valid).fit(progress=False)
    return model, rows, time.perf_counter() - t0


def table(header, lines) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(str(v) for v in line) + " |" for line in lines])


def part_weighting(args: Args, rng) -> str:
    """A VRAE (z_dim 4) on levels and slopes under several weightings of the KL."""
    xs = levels_and_slopes(args.sequences + args.sequences // 4, 16, rng)
    train, valid = (xs[:args.sequences], None), (xs[args.sequences:], None)
    mc = ModelConfig("vrae", x_dim=1, z_dim=4, rnn_dim=32, transition_dim=32, emission_dim=32)
    settings = [("beta 1, no annealing", dict(anneal_epochs=0)),
                ("beta 1, annealing 0.1 -> 1 over 10 epochs", dict(anneal_epochs=10)),
                ("beta 0.25", dict(anneal_epochs=0, beta=0.25)),
                ("beta 4", dict(anneal_epochs=0, beta=4.0)),
                ("beta 4, free bits 0.5", dict(anneal_epochs=0, beta=4.0, free_bits=0.5)),
                ("beta 100", dict(anneal_epochs=0, beta=100.0))]
    lines = []
    for name, kw in settings:
        _, rows, _ = fit(mc, train, valid, args, **kw)
        last = rows[-1]
        flagged = next((r["epoch"] for r in rows if r["posterior_collapse"]), None)
        lines.append([name, f"{last['valid_neg_elbo_per_step']:.3f}", f"{last['valid_recon_per_step']:.3f}",
                      f"{last['valid_kl_per_step']:.3f}", " ".join(f"{k:.3f}" for k in last["valid_kl_per_dim"]),
                      last["active_units"], "no" if flagged is None else f"epoch {flagged}"])
    return table(["setting", "-ELBO/step", "recon/step", "KL/step", "KL per dim", "active units", "collapse warned"],
                 lines)


def part_bidirectional(args: Args, rng) -> str:
    """The DMM's backward guide q(z_t | z_{t-1}, x_{t:T}) against the bidirectional q(z_t | z_{t-1}, x_{1:T})."""
    xs = levels_and_slopes(args.sequences + args.sequences // 4, 16, rng)
    train, valid = (xs[:args.sequences], None), (xs[args.sequences:], None)
    lines = []
    for guide in ("dks", "mean_field"):
        for bidirectional in (False, True):
            mc = ModelConfig("dmm", x_dim=1, z_dim=4, rnn_dim=32, transition_dim=32, emission_dim=32, guide=guide,
                             bidirectional=bidirectional)
            model, rows, seconds = fit(mc, train, valid, args)
            pyro.set_rng_seed(args.seed)
            bound = evaluate(model, *valid, num_particles=8)
            lines.append([guide, "yes" if bidirectional else "no", f"{bound['neg_elbo_per_step']:.3f}",
                          f"{bound['kl_per_step']:.3f}", rows[-1]["active_units"], f"{seconds:.0f}"])
    return table(["guide", "bidirectional", "valid -ELBO/step (8 draws)", "KL/step", "active units", "train s"],
                 lines)


def part_conditioning(args: Args, rng) -> str:
    """Conditional VRAE and DMM on two classes of ramps: generate 500 sequences per requested class and
    count those whose last step lies above their first (rising)."""
    xs, cs = two_class_ramps(args.sequences + args.sequences // 4, 12, rng)
    n = args.sequences
    lines = []
    runs = [("vrae", 0, 0.0), ("vrae", 2, 0.0), ("vrae", 2, 0.1), ("dmm", 0, 0.0), ("dmm", 2, 0.0)]
    for family, c_dim, free_bits in runs:
        mc = ModelConfig(family, x_dim=1, z_dim=2, rnn_dim=16, transition_dim=16, emission_dim=16, c_dim=c_dim)
        train = (xs[:n], None, cs[:n]) if c_dim else (xs[:n], None)
        valid = (xs[n:], None, cs[n:]) if c_dim else (xs[n:], None)
        model, rows, _ = fit(mc, train, valid, args, free_bits=free_bits)
        model.eval()
        rising = []
        for k in (0, 1):
            pyro.set_rng_seed(args.seed + 1)
            c = torch.eye(2)[k] if c_dim else None
            x = model.generate(12, c=c, num_samples=500)["x_mean"][..., 0]  # (500, 12)
            rising.append(f"{(x[:, -1] > x[:, 0]).float().mean().item():.2f}")
        flagged = next((r["epoch"] for r in rows if r["posterior_collapse"]), None)
        lines.append([family, "c (one-hot class)" if c_dim else "none", free_bits,
                      f"{rows[-1]['valid_neg_elbo_per_step']:.3f}", f"{rows[-1]['valid_kl_per_step']:.3f}",
                      "no" if flagged is None else f"epoch {flagged}",
                      rising[0] if c_dim else f"{rising[0]} (no class to ask)", rising[1] if c_dim else "-"])
    return table(["model", "condition", "free bits", "valid -ELBO/step", "KL/step", "collapse warned",
                  "P(rising), asked class 0 (rises)", "P(rising), asked class 1 (falls)"], lines)


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    print(f"# examples/training_diagnostics.py --epochs {args.epochs} --sequences {args.sequences} --seed {args.seed}\n")
    print("## 1. Weighting the KL: a VRAE (z_dim 4) on levels and slopes\n")
    print(part_weighting(args, rng) + "\n")
    print("## 2. DMM guides: backward against bidirectional\n")
    print(part_bidirectional(args, rng) + "\n")
    print("## 3. Conditioning on two classes of ramps\n")
    print(part_conditioning(args, rng) + "\n")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
