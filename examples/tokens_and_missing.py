"""Token sequences and missing data: the tables of docs/tokens-and-missing-data.md.

Part 1, tokens: VRAE, VRNN and DMM trained on the project's toy corpus (dvae/data/toy_corpus.txt,
written by dvae/data/toy_grammar.py) through the Python API (``dvae.fit``, ``Run.evaluate``,
``Run.generate``: the train, eval and generate verbs); the per-token -ELBO and IW bound on the test
split, against log V (a uniform guess) and the exact entropy of the grammar on the same
test sentences (every sentence has one derivation, so its probability is known).

Part 2, missing data: trajectories of the registered env dvae/LinearGaussian-v0 (known parameters),
with observation entries held out two ways: scattered (each entry missing with probability
``--scattered``) and a gap (``--gap`` consecutive steps with every entry missing, once per
sequence). DMM and VRNN are trained with ``--missing nan`` on the gappy data and impute the held-out
entries of the test split from their posterior predictive; they are held against linear
interpolation, the exact Kalman smoother of the true system (the best any model can do in mean
square), and an LGSSM fitted by maximum likelihood on the same gappy data.

    python examples/tokens_and_missing.py            # the documented tables (a few minutes on 2 cores)
    python examples/tokens_and_missing.py --smoke    # a reduced run (tests/examples)
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, fields

import numpy as np
import torch

import dvae
from dvae.files import write_json, write_text


@dataclass
class Args:
    out: str = "runs/tokens-and-missing"
    """Directory for the runs, the data and results.json."""
    text_epochs: int = 30
    """Epochs of each model on the corpus."""
    lg_epochs: int = 60
    """Epochs of the DMM and VRNN on the linear-Gaussian data."""
    lgssm_epochs: int = 30
    """Epochs of the fitted LGSSM (maximum likelihood by SVI)."""
    episodes: int = 128
    """Linear-Gaussian episodes collected."""
    steps: int = 64
    """Actions per episode (observations: steps + 1)."""
    scattered: float = 0.2
    """Probability that an observation entry is held out on its own."""
    gap: int = 8
    """Length of the gap (consecutive steps with every entry held out) in each sequence."""
    num_samples: int = 200
    """Posterior predictive samples per imputation."""
    seed: int = 0
    """Seed of the data, the held-out entries and the training runs."""
    smoke: bool = False
    """A reduced run: a corpus subset, a few episodes, one or two epochs."""


SMALL_NETS = dict(z_dim=8, rnn_dim=64, transition_dim=64, emission_dim=64)


# --- part 1: tokens ------------------------------------------------------------------------------------
def tokens(a: Args) -> dict:
    from dvae.data import split_indices
    from dvae.data.toy_grammar import CORPUS, generate

    lines = [line for line in open(CORPUS, encoding="utf-8").read().split("\n") if line.strip()]
    corpus = CORPUS
    if a.smoke:
        lines = lines[:150]
        corpus = os.path.join(a.out, "corpus-subset.txt")
        write_text(corpus, "\n".join(lines) + "\n")
    # the grammar's exact log p of each line: the generator's choices (same seed, same order)
    log_p = [lp for _, lp in generate(len(lines))]
    assert [s for s, _ in generate(len(lines))] == lines, "the corpus is not the grammar's output"
    test = split_indices(len(lines))["test"]
    test_tokens = sum(len(lines[i].split()) + 1 for i in test)  # + <eos>
    out = {"corpus": corpus, "test_sentences": len(test), "test_tokens": test_tokens,
           "grammar_entropy_per_token": -sum(log_p[i] for i in test) / test_tokens, "models": {}}
    for model in ("vrnn",) if a.smoke else ("vrae", "vrnn", "dmm"):
        run = os.path.join(a.out, f"text-{model}")
        fitted = dvae.fit(corpus, model=model, epochs=1 if a.smoke else a.text_epochs, batch_size=32, **SMALL_NETS,
                          seed=a.seed, no_progress=True, out=run)  # dvae train
        train = fitted.summary
        ev = fitted.evaluate(split="test", iw_samples=4 if a.smoke else 64, seed=a.seed)  # dvae eval
        gen = fitted.generate(20, 5, seed=a.seed)  # dvae generate --steps 20 --num-samples 5
        out["vocab_size"], out["log_vocab_size"] = ev["vocab_size"], ev["log_vocab_size"]
        out["models"][model] = {k: ev[k] for k in ("neg_elbo_per_step", "nll_iw_per_step", "recon_per_step",
                                                   "kl_per_step", "num_steps")}
        out["models"][model].update(epochs=train["epochs"], train_seconds=train["train_seconds"], samples=gen["texts"])
    return out


# --- part 2: missing data ------------------------------------------------------------------------------
def hold_out(obs: np.ndarray, a: Args, rng: np.random.Generator):
    """Masks (N, T+1, x_dim) of the scattered and the gap entries held out."""
    scattered = rng.random(obs.shape) < a.scattered
    gap = np.zeros(obs.shape, bool)
    L = obs.shape[1]
    for i in range(obs.shape[0]):
        start = int(rng.integers(1, max(2, L - a.gap)))
        gap[i, start:start + a.gap] = True
    return scattered & ~gap, gap


def kalman_smoother(env_params, xs, us):
    """The exact smoother of the true system (an LGSSM holding its parameters), in float64 and data
    units: per sequence ``mean``, ``lo``, ``hi`` (L_i, x_dim)."""
    from dvae.data import collate
    from dvae.models import ModelConfig, build_model

    M = env_params.matrices()
    m = build_model(ModelConfig("lgssm", x_dim=M.C.shape[0], u_dim=M.B.shape[1], z_dim=M.A.shape[0])).double()
    m.set_params(M.A, M.B, M.C, M.Q, M.R, M.m0, M.P0)
    batch = collate([torch.from_numpy(x.astype(np.float64)) for x in xs],
                    [torch.from_numpy(np.clip(u, -env_params.max_action, env_params.max_action).astype(np.float64))
                     for u in us])
    res = {k: v.numpy() for k, v in m.impute(batch).items()}  # (B, T, x_dim)
    return [{k: v[i, :len(x)] for k, v in res.items()} for i, x in enumerate(xs)]


def missing_data(a: Args) -> dict:
    import gymnasium as gym

    import envs
    from dvae.data import load_npz
    from dvae.eval.impute import impute_sequences, linear_interpolation, rmse_on

    episodes, steps = (16, 20) if a.smoke else (a.episodes, a.steps)
    d = envs.collect("dvae/LinearGaussian-v0", episodes=episodes, steps=steps, policy="ou", seed=a.seed)
    truth = d["obs"].astype(np.float64)  # (N, T+1, x_dim), fully observed
    scattered, gap = hold_out(truth, a, np.random.default_rng(a.seed + 1))
    gappy = np.where(scattered | gap, np.nan, truth)
    path = os.path.join(a.out, "lg-gappy.npz")
    envs.save_npz(path, {**d, "obs": gappy})
    data = load_npz(path, missing=True)
    test = data.indices("test")
    xs, us = [data.xs[i] for i in test], [data.us[i] for i in test]
    true_xs = [truth[i, :len(data.xs[i])] for i in test]
    masks = {"scattered": [scattered[i, :len(x)] for i, x in zip(test, xs)],
             "gap": [gap[i, :len(x)] for i, x in zip(test, xs)]}
    masks["all"] = [s | g for s, g in zip(masks["scattered"], masks["gap"])]

    def score(estimates, bands=None):
        row = {f"rmse_{k}": rmse_on(m, true_xs, estimates) for k, m in masks.items()}
        if bands is not None:  # fraction of held-out true values inside the 90% band
            inside = np.concatenate([((lo <= t) & (t <= hi))[m] for (lo, hi), t, m in zip(bands, true_xs, masks["all"])])
            row["coverage90"] = float(inside.mean())
        return row

    rows = {}
    train_means = np.nanmean(np.concatenate([data.xs[i] for i in data.indices("train")]), 0)
    rows["linear interpolation"] = score([linear_interpolation(x, train_means) for x in xs])
    env = gym.make("dvae/LinearGaussian-v0").unwrapped
    ks = kalman_smoother(env.params, xs, us)
    rows["Kalman smoother, true parameters"] = score([r["mean"] for r in ks], [(r["lo"], r["hi"]) for r in ks])
    for model, epochs in (("lgssm", a.lgssm_epochs), ("dmm", a.lg_epochs), ("vrnn", a.lg_epochs)):
        if a.smoke and model == "vrnn":
            continue
        run = os.path.join(a.out, f"lg-{model}")
        extra = dict(z_dim=2) if model == "lgssm" else SMALL_NETS
        fitted = dvae.fit(path, model=model, missing="nan", epochs=2 if a.smoke else epochs, batch_size=16, **extra,
                          seed=a.seed, no_progress=True, out=run)
        torch.manual_seed(a.seed)
        res = impute_sequences(fitted.model, fitted.normalizer, xs, us, 20 if a.smoke else a.num_samples)
        name = {"lgssm": "LGSSM fitted on the gappy data (exact smoother)", "dmm": "DMM, posterior predictive",
                "vrnn": "VRNN, posterior predictive"}[model]
        rows[name] = score([r["mean"] for r in res], [(r["lo"], r["hi"]) for r in res])
    return {"episodes": episodes, "steps": steps, "test_sequences": len(xs),
            "held_out": {k: int(sum(m.sum() for m in v)) for k, v in masks.items()},
            "observed_fraction": float(1 - np.isnan(gappy).mean()), "methods": rows}


# --- report --------------------------------------------------------------------------------------------
def report(res: dict) -> str:
    t = res["tokens"]
    lines = [f"Per-token bounds on the test split of {t['corpus']} ({t['test_sentences']} sentences, "
             f"{t['test_tokens']} tokens with <eos>; nats per token)", "",
             "| model | -ELBO | IW bound | reconstruction | KL | epochs | train s |", "|---|---|---|---|---|---|---|"]
    for name, r in t["models"].items():
        lines.append(f"| {name} | {r['neg_elbo_per_step']:.3f} | {r['nll_iw_per_step']:.3f} | {r['recon_per_step']:.3f} "
                     f"| {r['kl_per_step']:.3f} | {r['epochs']} | {r['train_seconds']:.0f} |")
    lines.append(f"| uniform over the vocabulary (log V, V = {t['vocab_size']}) | {t['log_vocab_size']:.3f} | | | | | |")
    lines.append(f"| the grammar itself (exact entropy of these sentences) | {t['grammar_entropy_per_token']:.3f} | | | | | |")
    for name, r in t["models"].items():
        lines.append(f"\n{name} samples: " + " / ".join(r["samples"]))
    m = res["missing"]
    lines += ["", f"Imputation RMSE on held-out entries of {m['test_sequences']} test sequences of dvae/LinearGaussian-v0 "
              f"({m['episodes']} episodes x {m['steps'] + 1} observations; held out: {m['held_out']['scattered']} scattered "
              f"entries and {m['held_out']['gap']} in gaps; {100 * m['observed_fraction']:.0f}% of all entries observed)", "",
              "| method | RMSE scattered | RMSE gaps | RMSE all | 90% band coverage |", "|---|---|---|---|---|"]
    for name, r in m["methods"].items():
        cov = f"{r['coverage90']:.3f}" if "coverage90" in r else ""
        lines.append(f"| {name} | {r['rmse_scattered']:.4f} | {r['rmse_gap']:.4f} | {r['rmse_all']:.4f} | {cov} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in fields(Args):
        if f.type in ("bool", bool):
            ap.add_argument(f"--{f.name.replace('_', '-')}", action="store_true")
        else:
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    a = Args(**vars(ap.parse_args(argv)))
    os.makedirs(a.out, exist_ok=True)
    res = {"args": vars(a), "tokens": tokens(a), "missing": missing_data(a)}
    write_json(os.path.join(a.out, "results.json"), res, indent=2)
    print(report(res))
    return res


if __name__ == "__main__":
    main()
