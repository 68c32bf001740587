"""Section "guides": five inference networks for the same DMM, on the same data and time budget.

The generative model (the DMM's gated transition and MLP emitter, same sizes, same seed) is fitted
with each guide by ``dvae train`` for the same wall-clock budget of training, then scored by ``dvae
eval`` on the same held-out sequences: the ELBO per step (the bound the guide was trained on) and the
importance-weighted bound with K samples from the same guide (tighter; the gap between the two is how
loose the guide is for that model). The data come from the linear-Gaussian system
``dvae/LinearGaussian-v0``, whose exact log-likelihood under the true parameters (Kalman filter) is the
reference row: no model of the data can do better than it in expectation on held-out sequences.

Guides (``dvae train --guide ...``):

- mean_field: q(z_t | x_{t:T}, u): the backward RNN's state alone;
- ltr: q(z_t | z_{t-1}, x_{0:t}, u_{0:t-1}): a forward RNN (a filter, blind to later observations);
- dks: q(z_t | z_{t-1}, x_{t:T}, u): the backward RNN and the combiner (Krishnan et al. 2017);
- dks_bidirectional: q(z_t | z_{t-1}, x_{0:T}, u): both RNNs into the combiner (``--bidirectional``, the
  DMM's default since the guides it reads were compared; the other rows say ``--no-bidirectional``);
- iaf: the dks Gaussian of each step followed by one affine autoregressive flow (``--guide iaf``).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np

from studies.compare import Context, Section, markdown_table
from dvae.files import save_figure
from dvae.infer.trainer import TrainConfig, default_lr

GUIDES = [  # key, label, what q(z_t | .) reads, dvae train flags
    ("mean_field", "mean-field", "x_{t:T}, u", ["--guide", "mean_field", "--no-bidirectional"]),
    ("ltr", "left-to-right (filter)", "z_{t-1}, x_{0:t}, u_{0:t-1}", ["--guide", "ltr"]),
    ("dks", "DKS (backward RNN)", "z_{t-1}, x_{t:T}, u", ["--guide", "dks", "--no-bidirectional"]),
    ("dks_bidirectional", "DKS bidirectional", "z_{t-1}, x_{0:T}, u", ["--guide", "dks", "--bidirectional"]),
    ("iaf", "DKS + IAF (1 flow)", "z_{t-1}, x_{t:T}, u; then a flow", ["--guide", "iaf", "--num-iafs", "1", "--no-bidirectional"]),
]

FULL = dict(episodes=200, steps=50, seconds=120.0, iw=100, z_dim=4, rnn_dim=32, hidden=32, batch_size=16)
QUICK = dict(episodes=24, steps=12, seconds=1.0, iw=10, z_dim=2, rnn_dim=8, hidden=8, batch_size=8)
ENV = "dvae/LinearGaussian-v0"


def _collect(path: Path, sizes: dict, seed: int) -> None:
    from envs import collect, save_npz

    data = collect(ENV, sizes["episodes"], sizes["steps"], policy="ou", seed=seed)
    save_npz(path, data)


def _exact_per_step(xs, us) -> float:
    """-log p(x | u) per step under the true parameters (Kalman filter), over the given sequences."""
    from envs.linear_gaussian import log_likelihood as kalman_log_likelihood

    total, steps = 0.0, 0
    for x, u in zip(xs, us):
        L = len(x)
        total += kalman_log_likelihood(x, None if u is None else u[:L - 1])
        steps += L
    return -total / steps


def _train_and_eval(key: str, flags: List[str], data_path: Path, run_dir: Path, sizes: dict, ctx: Context) -> dict:
    import dvae
    from dvae.flags import options_from_flags
    from dvae.run import read_metrics

    if run_dir.exists():  # a fresh run each time (the budget is the same for every guide)
        shutil.rmtree(run_dir)
    h = str(sizes["hidden"])
    train_args = ["train", "--model", "dmm", "--data", str(data_path), "--out", str(run_dir),
                  "--time-limit", str(sizes["seconds"]), "--epochs", "100000", "--patience", "0",
                  "--batch-size", str(sizes["batch_size"]), "--z-dim", str(sizes["z_dim"]),
                  "--rnn-dim", str(sizes["rnn_dim"]), "--transition-dim", h, "--emission-dim", h,
                  "--seed", str(ctx.seed), "--device", ctx.device, "--no-progress", "--no-plots"] + flags
    options = options_from_flags(flags)  # the guide's flags
    run = dvae.fit(str(data_path), model="dmm", out=run_dir, time_limit=sizes["seconds"], epochs=100000, patience=0,
                   batch_size=sizes["batch_size"], z_dim=sizes["z_dim"], rnn_dim=sizes["rnn_dim"],
                   transition_dim=sizes["hidden"], emission_dim=sizes["hidden"], seed=ctx.seed, device=ctx.device,
                   no_progress=True, no_plots=True, **options)
    summary = run.summary
    rows = read_metrics(str(run_dir))
    ev = run.evaluate(split="test", iw_samples=sizes["iw"], seed=ctx.seed)
    train_seconds = float(summary["train_seconds"])
    epochs = int(summary["epochs"])
    elapsed = np.cumsum([r["epoch_seconds"] for r in rows]).tolist()
    return {"command": "dvae " + " ".join(train_args), "epochs": epochs, "best_epoch": int(summary["best_epoch"]),
            "train_seconds": train_seconds, "seconds_per_epoch": train_seconds / max(epochs, 1),
            "test_neg_elbo_per_step": ev["neg_elbo_per_step"], "test_nll_iw_per_step": ev["nll_iw_per_step"],
            "test_kl_per_step": ev["kl_per_step"], "test_recon_per_step": ev["recon_per_step"],
            "curve": {"train_seconds": elapsed, "valid_neg_elbo_per_step": [r["valid_neg_elbo_per_step"] for r in rows]}}


def _figure(ctx: Context, results: Dict[str, dict], exact: dict, iw: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path, link = ctx.figure("guides")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    for key, label, _, _ in GUIDES:
        c = results[key]["curve"]
        ax.plot(c["train_seconds"], c["valid_neg_elbo_per_step"], label=label, lw=1.4)
    ax.axhline(exact["valid"], color="k", ls="--", lw=1, label="exact NLL, true parameters")
    curves = [[v for v in results[key]["curve"]["valid_neg_elbo_per_step"] if math.isfinite(v)] for key, *_ in GUIDES]
    curves = [c for c in curves if c]
    if curves:  # the first epochs' bounds dwarf the differences at the end: from a tenth of each run on
        lo = min([min(c) for c in curves] + [exact["valid"]])
        hi = max(c[len(c) // 10] for c in curves)
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-3), hi + 0.05 * (hi - lo + 1e-3))
    ax.set_xlabel("training time (s, 1 thread)")
    ax.set_ylabel("validation -ELBO per step (nats)")
    ax.set_title("Validation bound against training time")
    ax.legend(fontsize=8)
    labels = [label for _, label, _, _ in GUIDES]
    pos = np.arange(len(GUIDES))
    elbo = [results[k]["test_neg_elbo_per_step"] for k, *_ in GUIDES]
    iwb = [results[k]["test_nll_iw_per_step"] for k, *_ in GUIDES]
    bx.vlines(pos, iwb, elbo, color="0.6", lw=3)  # the gap: the guide's looseness
    bx.plot(pos, elbo, "o", color="C0", label="-ELBO")
    bx.plot(pos, iwb, "s", color="C1", label=f"-IW bound (K={iw})")
    bx.axhline(exact["test"], color="k", ls="--", lw=1, label="exact NLL, true parameters")
    bx.set_xticks(pos)
    bx.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
    bx.set_ylabel("test nats per step")
    bx.set_title("Held-out bounds (lower is better)")
    bx.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return link


def _prose(results: Dict[str, dict], exact: dict, iw: int) -> List[str]:
    """Sentences stating what the table shows, computed from the results."""
    label = {k: lab for k, lab, _, _ in GUIDES}
    by_elbo = sorted(results, key=lambda k: results[k]["test_neg_elbo_per_step"])
    by_iw = sorted(results, key=lambda k: results[k]["test_nll_iw_per_step"])
    gaps = {k: results[k]["test_neg_elbo_per_step"] - results[k]["test_nll_iw_per_step"] for k in results}
    by_gap = sorted(results, key=lambda k: gaps[k])
    # the validation bound's fall over the last fifth of each run's training time: still improving?
    late = {}
    for k, r in results.items():
        t, v = np.asarray(r["curve"]["train_seconds"]), np.asarray(r["curve"]["valid_neg_elbo_per_step"])
        late[k] = float(np.interp(0.8 * t[-1], t, v) - v[-1]) if len(t) > 1 else math.nan
    fastest = min(results, key=lambda k: results[k]["seconds_per_epoch"])
    slowest = max(results, key=lambda k: results[k]["seconds_per_epoch"])
    out = [f"On the held-out sequences the tightest ELBO is the {label[by_elbo[0]]} guide's "
           f"({results[by_elbo[0]]['test_neg_elbo_per_step']:.3f} nats per step) and the loosest the "
           f"{label[by_elbo[-1]]} guide's ({results[by_elbo[-1]]['test_neg_elbo_per_step']:.3f}); the exact "
           f"negative log-likelihood under the true parameters is {exact['test']:.3f}.",
           f"The IW bound (K = {iw}) orders them {', '.join(label[k] for k in by_iw)} (best first); its distance "
           f"to the exact value, {results[by_iw[0]]['test_nll_iw_per_step'] - exact['test']:.3f} nats per step "
           f"for the best, is what the generative model itself still misses (plus the IW bound's own "
           "slack), whatever the guide.",
           f"The gap -ELBO minus -IW, the guide's looseness for its own model, is smallest for "
           f"{label[by_gap[0]]} ({gaps[by_gap[0]]:.3f}) and largest for {label[by_gap[-1]]} "
           f"({gaps[by_gap[-1]]:.3f}).",
           f"Per epoch, {label[fastest]} is the cheapest ({results[fastest]['seconds_per_epoch']:.2f} s) and "
           f"{label[slowest]} the dearest ({results[slowest]['seconds_per_epoch']:.2f} s), so in the same "
           f"budget they ran {results[fastest]['epochs']} and {results[slowest]['epochs']} epochs."]
    falls = ", ".join(f"{label[k]} {late[k]:.3f}" for k in results)
    if all(late[k] > 0 for k in late):
        out.append("No run had converged when its budget ran out: over the last fifth of its training time the "
                   f"validation -ELBO per step still fell ({falls} nats), so the table compares the bounds "
                   "reached in a fixed budget, not the guides' optima.")
    else:
        out.append(f"Over the last fifth of each run's training time the validation -ELBO per step fell by {falls} "
                   "nats (a negative number: it rose); the bounds are those reached in a fixed budget.")
    return out


def run(ctx: Context) -> Section:
    from dvae.run import DataConfig, RunConfig, load_data

    sizes = QUICK if ctx.quick else FULL
    work = Path(ctx.work_dir) / "guides"
    work.mkdir(parents=True, exist_ok=True)
    data_path = work / "lgssm.npz"
    _collect(data_path, sizes, ctx.seed)
    data = load_data(RunConfig(data=DataConfig(source=str(data_path))))
    exact = {split: _exact_per_step(*data.subset(split)) for split in ("valid", "test")}
    # a short throwaway run first, so that no guide's first epoch pays the process's one-time costs
    warm = dict(sizes, seconds=min(1.0, sizes["seconds"]), iw=1)
    _train_and_eval("warmup", GUIDES[0][3], data_path, work / "warmup", warm, ctx)
    results = {}
    for key, _, _, flags in GUIDES:
        results[key] = _train_and_eval(key, flags, data_path, work / key, sizes, ctx)
    link = _figure(ctx, results, exact, sizes["iw"])

    header = ["guide", "q(z_t) reads", "epochs", "train s", "s / epoch", "test -ELBO / step",
              f"test -IW (K={sizes['iw']}) / step", "gap ELBO-IW", "KL / step"]
    rows = []
    for key, label, reads, _ in GUIDES:
        r = results[key]
        rows.append([label, f"`{reads}`", r["epochs"], r["train_seconds"], r["seconds_per_epoch"],
                     r["test_neg_elbo_per_step"], r["test_nll_iw_per_step"],
                     r["test_neg_elbo_per_step"] - r["test_nll_iw_per_step"], r["test_kl_per_step"]])
    rows.append(["exact NLL, true parameters (Kalman)", "-", "-", "-", "-", "-", exact["test"], "-", "-"])
    n_test = len(data.indices("test"))
    flags_note = "; ".join(f"{label}: `{' '.join(flags)}`" for _, label, _, flags in GUIDES)
    md = [
        f"The same DMM (z_dim {sizes['z_dim']}, GRU guide RNN of {sizes['rnn_dim']}, transition and emitter "
        f"hidden size {sizes['hidden']}, seed {ctx.seed}) fitted with each guide by `dvae train` for "
        f"{sizes['seconds']:.0f} s on one thread (`--time-limit`, wall-clock, which also pays for each "
        "epoch's validation pass and latent diagnostics, so the updates' own time, `train s`, is less; "
        f"time-vectorized program, Adam with the DMM's default learning rate {default_lr('dmm'):g}, batch "
        f"{sizes['batch_size']}, KL warm-up over {TrainConfig().anneal_epochs:g} epochs, no early stopping), then scored by "
        f"`dvae eval --split test --iw-samples {sizes['iw']}` on the same {n_test} held-out sequences. Data: "
        f"{sizes['episodes']} episodes of {sizes['steps'] + 1} observations of `{ENV}` under an "
        "Ornstein-Uhlenbeck control (`dvae collect --policy ou`), split 80/10/10. The reference row is the "
        "exact negative log-likelihood of the same test sequences under the system's true parameters "
        "(Kalman filter, `envs.linear_gaussian.log_likelihood`). Flags: " + flags_note + ".",
        "",
        markdown_table(header, rows),
        "",
        "`KL / step` is the closed-form KL of each step given the drawn past for the Gaussian guides and the "
        "one-draw estimate log q(z_t) - log p(z_t) for the flow guide; `gap ELBO-IW` = test -ELBO minus "
        "test -IW.",
        "",
        f"![validation bound against training time, and held-out bounds per guide]({link})",
        "",
        "Left: the validation -ELBO per step after each epoch against the cumulated training time (from each "
        "run's metrics.jsonl; validation time not counted; the first tenth of each run is cut off the vertical "
        "range), with the exact NLL of the validation sequences dashed. Right: the held-out -ELBO and -IW "
        "bound per guide beside the exact NLL. The grey bar between a guide's two marks measures how loose "
        "that guide is: the ELBO falls short of log p(x) by KL(q(z | x) || p(z | x)), and K importance "
        "samples from the same q recover part of that shortfall (all of it as K grows). "
        "A guide that reads less than the posterior depends on (mean-field drops z_{t-1}, the filter drops "
        "the future observations) is expected to leave a larger gap.",
        "",
        *_prose(results, exact, sizes["iw"]),
        "",
        "What the figures do not show: one seed and one data set per guide (how much another seed would "
        "move the table is not measured here); times measured on a machine shared "
        "with other jobs, so epochs per budget carry that noise; the iaf guide's KL is a one-draw estimate "
        "(no closed form), which makes its training signal noisier than the closed-form KL of the "
        "Gaussian guides; and the IW bound is itself a bound, not the model's log-likelihood. The Pendulum "
        "data are not run here: this section's budget goes to the system with an exact likelihood.",
    ]
    results_out = {"sizes": sizes, "env": ENV, "exact_nll_per_step": exact, "num_test_sequences": n_test,
                   "guides": results}
    return Section(key="guides", title="Guides on the same model: bound reached and time", markdown="\n".join(md),
                   results=results_out)
