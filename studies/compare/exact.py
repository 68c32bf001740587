"""Section "exact": the exact log-likelihood of a known linear-Gaussian system beside the variational
bounds of the models fitted to its data.

Data: ``dvae/LinearGaussian-v0`` (the default parameters of ``envs.linear_gaussian``: 2-D latent,
2-D observation, 1-D control) under uniform random controls, collected with ``envs.collect``; the
loaders' deterministic train/valid/test split. On the SAME held-out sequences, per observed step in
the data's units (nats, higher is better):

- the exact log-likelihood under the true parameters (Kalman filter, float64);
- the LGSSM fitted by maximum likelihood (``dvae train --model lgssm``'s program and defaults): its
  exact log-likelihood;
- every other family of ``dvae.models.MODELS`` with the project's default settings, each trained for
  the same budget of training CPU seconds (``_bounds.fit``): the ELBO and the importance-weighted bounds IW_K, K = 1, 10, 100, 1000;
- bootstrap particle-filter estimates (``dvae.infer.smc``) under the true parameters and with every
  family's learned generative networks (through the state-space contract), at growing particle counts.

A run with ``--families`` trains only those; the others keep their stored results (same data), and a
family with none is listed as not run yet.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from studies.compare import (Context, Section, all_families, carried_families, markdown_table, not_run_note,
                             stored_run, to_run)
from studies.compare import _bounds as B
from studies.compare.review import beside
from dvae.files import save_figure
from dvae.infer.trainer import TrainConfig
from dvae.models import ModelConfig

_MC, _TC = ModelConfig(), TrainConfig()  # the defaults the prose names



def variational() -> list:
    """The families beside the exact LGSSM: every other family of ``dvae.models.MODELS``."""
    return [f for f in all_families() if f != "lgssm"]


LGSSM_TRAIN = {"lgssm": {"lr": 0.03, "batch_size": 64}}
"""The LGSSM's maximum-likelihood fit takes larger steps than the defaults (``dvae train --model lgssm
--lr 0.03 --batch-size 64``): its per-step Kalman program reaches only a few epochs in the time limit,
and with the defaults (at the time of writing lr 1e-2, batch 16) it stops far from the optimum."""


def sizes(quick: bool) -> dict:
    """Every variational family gets the same time limit and particle counts."""
    fams = variational()
    if quick:
        return {"episodes": 40, "steps": 20, "time_limit": {"lgssm": 1.0, **{f: 1.0 for f in fams}},
                "ks": [1, 10, 100, 1000], "particles_true": [10, 100, 1000],
                "particles": {f: [10, 100, 1000] for f in fams}, "train": LGSSM_TRAIN}
    return {"episodes": 400, "steps": 50, "time_limit": {"lgssm": 90.0, **{f: 150.0 for f in fams}},
            "ks": [1, 10, 100, 1000], "particles_true": [10, 100, 1000, 10000],
            "particles": {f: [10, 100, 1000, 10000] for f in fams}, "train": LGSSM_TRAIN}


def _legacy(res: dict):
    """The per-family results of a run stored before they were recorded one by one: keep them when
    its data sizes are this run's (the seed then was the default, 0), each with its own time limit."""
    limits = res.get("sizes", {}).get("time_limit", {})
    return {f: {"time_limit": limits[f], **m} if f in limits and "time_limit" not in m else m
            for f, m in res.get("models", {}).items()}


def _signature(S: dict, seed: int) -> dict:
    return {"episodes": S["episodes"], "steps": S["steps"], "seed": seed}


def collect_data(episodes: int, steps: int, seed: int):
    """Trajectories of dvae/LinearGaussian-v0 as a SequenceData, and the env's true parameters."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers dvae/LinearGaussian-v0)
    from dvae.data.datasets import from_trajectories

    d = envs.collect("dvae/LinearGaussian-v0", episodes=episodes, steps=steps, policy="random", seed=seed)
    params = gym.make("dvae/LinearGaussian-v0").unwrapped.params
    meta = {"env_id": "dvae/LinearGaussian-v0", "seed": seed, "episodes": episodes, "steps": steps}
    data = from_trajectories(d["obs"], d["actions"], d["lengths"], "dvae/LinearGaussian-v0", meta,
                             (d["action_low"], d["action_high"]))
    return data, params


def exact_per_step(data, params, split: str = "test") -> float:
    """sum of the exact log p(x | u) over a split's sequences / their steps (data units)."""
    from envs.linear_gaussian import log_likelihood as kalman_log_likelihood

    xs, us = data.subset(split)
    total = sum(kalman_log_likelihood(x, u[:-1], params) for x, u in zip(xs, us))  # u[-1] is padding
    return total / sum(len(x) for x in xs)


def true_pf(data, params, particles, seed: int, split: str = "test") -> dict:
    """The particle filter under the true parameters, float64, data units."""
    from dvae.data.batch import collate
    from dvae.infer.smc import lgssm_particle_filter

    xs, us = data.subset(split)
    batch = collate([torch.tensor(x, dtype=torch.float64) for x in xs], [torch.tensor(u, dtype=torch.float64)
                                                                        for u in us])
    steps = int(batch.lengths.sum())
    out = {}
    for p in particles:
        torch.manual_seed(seed + p)
        t0 = time.perf_counter()
        out[f"pf_{p}"] = lgssm_particle_filter(params.matrices(), batch, p).sum().item() / steps
        out[f"seconds_pf_{p}"] = round(time.perf_counter() - t0, 2)
    return out


def run(ctx: Context) -> Section:
    from dvae.data import Normalizer

    S = sizes(ctx.quick)
    data, params = collect_data(S["episodes"], S["steps"], ctx.seed)
    norm = Normalizer.fit(*data.subset("train"))
    test = B.prepare(data, norm, "test")
    n_test = len(test[0])
    sig = _signature(S, ctx.seed)
    legacy = (lambda r: _legacy(r) if r.get("sizes", {}).get("episodes") == S["episodes"]
              and r.get("sizes", {}).get("steps") == S["steps"] and ctx.seed == 0 else None)
    res = {"sizes": S, "signature": sig, "num_test_sequences": n_test,
           "num_test_steps": int(sum(len(x) for x in test[0])), "log_det_per_step": norm.log_det_per_step,
           "models": carried_families(ctx, sig, legacy)}
    res["exact_true"] = exact_per_step(data, params)
    res["true_pf"] = true_pf(data, params, S["particles_true"], ctx.seed)
    for family in to_run(ctx, ["lgssm"] + variational()):
        model, info = B.fit(family, data, norm, S["time_limit"][family], ctx.seed, ctx.device,
                            **S["train"].get(family, {}))
        t0 = time.perf_counter()
        info.update(B.bounds(model, *test, norm.log_det_per_step, S["ks"], ctx.seed))
        if family != "lgssm":
            info.update(B.particle_filter(model, *test, norm.log_det_per_step, S["particles"][family], ctx.seed))
        info["eval_seconds"] = round(time.perf_counter() - t0, 1)
        info["time_limit"] = S["time_limit"][family]
        res["models"][family] = info
        ctx.partial(_section(res, ctx.figure("exact")[1]))  # the families so far (the figure comes at the end)
    return _section(res, None, ctx)


def _section(res: dict, figure, ctx=None) -> Section:
    """The section from ``res`` (its models put in order, the missing ones listed), drawing the figure
    with ``ctx`` or linking ``figure``."""
    res["models"] = {f: res["models"][f] for f in ["lgssm"] + variational() if f in res["models"]}
    res["not_run"] = [f for f in ["lgssm"] + variational() if f not in res["models"]]
    if ctx is not None:
        figure = _figure(ctx, res)
    return Section("exact", "Exact likelihood against the variational bounds (linear-Gaussian data)",
                   _markdown(res, figure), res)


def restate(res: dict, ctx: Context) -> str:
    """The section's markdown from its stored results (every family without results listed as not run
    yet), linking the figure stored with them."""
    res = dict(res)
    meta = (ctx.previous or {}).get("meta", {})
    res["models"] = {f: m if "run" in m or B.budget_kind(m) == "cpu" else {"run": stored_run(meta), **m}
                     for f, m in res.get("models", {}).items()}  # a wall-clock row: when and at what load
    res["not_run"] = [f for f in ["lgssm"] + variational() if f not in res["models"]]
    return _markdown(res, ctx.figure("exact")[1])


def _lr_note(res: dict) -> str:
    """The learning rate each neural model trained with, as ``fit`` recorded it."""
    lrs = {f: res["models"][f]["lr"] for f in _present(res) if "lr" in res["models"][f]}
    if not lrs:
        return "the default learning rate (not recorded)"
    if len(set(lrs.values())) == 1:
        return f"learning rate {next(iter(lrs.values())):g}"
    return "learning rates " + ", ".join(f"{f.upper()} {v:g}" for f, v in lrs.items())


def _present(res: dict) -> list:
    """The variational families with results (run now or carried from a stored run)."""
    return [f for f in res["models"] if f != "lgssm"]


def _pf_counts(m: dict) -> list:
    """The particle counts a family's results hold (a stored run may have used fewer)."""
    return sorted(int(k[3:]) for k in m if k.startswith("pf_"))


def _origin(m: dict) -> str:
    run = m.get("run")
    return "" if not run else f" (stored run of {run.get('date')}, commit {run.get('commit')})"


def _markdown(res: dict, figure: str) -> str:
    S, M = res["sizes"], res["models"]
    ks, pt = S["ks"], S["particles_true"]
    exact = res["exact_true"]
    rows = [["exact, true parameters (Kalman)", exact, 0.0, "", ""]]
    if "lgssm" in M:
        rows.append(["LGSSM fitted by ML (exact)", M["lgssm"]["elbo"], M["lgssm"]["elbo"] - exact,
                     f"{M['lgssm']['train_seconds']:.1f}", f"{M['lgssm']['epochs']:g}"])
    for f in _present(res):
        m = M[f]
        rows.append([f"{f.upper()} ELBO", m["elbo"], m["elbo"] - exact, f"{m['train_seconds']:.1f}", f"{m['epochs']:g}"])
        for k in ks:
            rows.append([f"{f.upper()} IW, K = {k}", m[f"iw_{k}"], m[f"iw_{k}"] - exact, "", ""])
        for p in _pf_counts(m):
            rows.append([f"{f.upper()} particle filter, {p} particles", m[f"pf_{p}"], m[f"pf_{p}"] - exact, "", ""])
    for f in res.get("not_run", []):
        rows.append([f"{f.upper()}", "not run yet", "", "", ""])
    for p in pt:
        rows.append([f"particle filter, true parameters, {p} particles", res["true_pf"][f"pf_{p}"],
                     res["true_pf"][f"pf_{p}"] - exact, "", ""])
    table = markdown_table(["estimate", "log p per step", "minus exact", "train wall s", "epochs"], rows)
    best_k = max(ks)
    gap_rows = []
    for f in _present(res):
        m = M[f]
        cands = {f"IW_{best_k}": m[f"iw_{best_k}"]}
        if _pf_counts(m):
            p_max = max(_pf_counts(m))
            cands[f"PF_{p_max}"] = m[f"pf_{p_max}"]
        which = max(cands, key=cands.get)
        best = cands[which]
        gap_rows.append([f.upper(), exact - m["elbo"], exact - m[f"iw_{best_k}"], f"{best:.3f} ({which})",
                         exact - best, best - m["elbo"]])
    gaps = markdown_table(["model", "ELBO gap to exact", f"IW_{best_k} gap to exact", "best estimate of the model's log p",
                           "model gap (exact - best)", "inference gap (best - ELBO)"], gap_rows)
    time_rows = [[f.upper() + _origin(M[f]), B.budget_cell(M[f], M[f].get("time_limit", S["time_limit"].get(f, float("nan")))),
                  B.cpu_cell(M[f]), M[f]["train_seconds"], f"{M[f]['epochs']:g}", f"{M[f]['best_epoch']:g}",
                  B.stop_cell(M[f], M[f].get("time_limit", S["time_limit"].get(f))), M[f]["eval_seconds"]] for f in M]
    times = markdown_table(["model", "budget", "train CPU s", "train wall s", "epochs", "best epoch", "stopped by",
                            "bounds + filter wall s"], time_rows, fmt="{:.1f}")
    return f"""Data: `dvae/LinearGaussian-v0` (2-D latent rotating by 0.2 rad and damped by 0.95 per step, 2-D
observation, 1-D control; `envs/linear_gaussian.py`) under uniform random controls in [-1, 1],
{S['episodes']} episodes of {S['steps']} steps (collected by `envs.collect`, seed as the command's `--seed`), the
loaders' 80/10/10 split. Every row is on the same {res['num_test_sequences']} held-out sequences
({res['num_test_steps']} observed steps): a log-likelihood (or a bound on it) per observed step, in nats, in the data's
units (the standardisation's log-Jacobian {res['log_det_per_step']:.3f} nats per step removed); higher is better.
The models use the project's default sizes (z_dim {_MC.z_dim}, RNN width {_MC.rnn_dim}, hidden widths {_MC.transition_dim}) and training settings
(`TrainConfig` defaults: Adam at {_lr_note(res)}, batch {_TC.batch_size}, KL warm-up over {_TC.anneal_epochs:g} epochs, patience {_TC.patience}; the LGSSM's maximum-likelihood
fit with lr {S['train']['lgssm']['lr']} and batch {S['train']['lgssm']['batch_size']}, as with the defaults its
Kalman program stops far from the optimum in the time), each trained for at most its budget of training seconds
(budgets {', '.join(f'{k} {v:.0f} s' for k, v in S['time_limit'].items())}; the table of times below gives each row's
budget and its kind), keeping the best validation epoch. Each estimate is one Monte Carlo draw over the whole test set (the ELBO with one path per sequence
and the analytic per-step KL).

{table}

{not_run_note("exact", res.get("not_run", []))}

Each model's gap split in two. Its best estimate of its OWN log-likelihood is the larger of its largest-K IW bound
and its particle filter at the most particles (both lower bounds on it on average); the model gap (the truth minus
that) is what the learned generative networks lose against the true system, and the inference gap (that minus the
ELBO) is what the guide loses against the model's own posterior. Both split points are estimates from below, so the
model gap is an over- and the inference gap an under-estimate:

{gaps}

{beside({f: M[f][f"iw_{best_k}"] for f in _present(res)}, f"the held-out IW bound (K = {best_k}), highest first", True)}

Training and evaluation time (the line above gives the machine and its torch threads). {B.budget_note(list(M.values()))}
A re-run on a faster machine trains for other epochs and gives other numbers:

{times}

![bounds against K and particles]({figure})

*Left: the IW bound against K (log axis; K = 1 is the one-sample IW bound, whose mean is the ELBO) for each
variational family with results above, with the exact log-likelihood under the true parameters and the fitted LGSSM's as horizontal
lines. Right: particle-filter estimates against the number of particles, under the true parameters (which approach
the exact line) and with each family's learned transition and emission (which approach each model's own
log-likelihood, not the truth).*

{_findings(res)} What it does not show: the Monte Carlo spread of each estimate (one draw each; the spread
across sequences is not an error bar), or how the models rank after longer training.
"""


def _findings(res: dict) -> str:
    """The prose claims, each checked on the results it states."""
    S, M, exact = res["sizes"], res["models"], res["exact_true"]
    ks = S["ks"]
    estimates = {f"{f.upper()} {k}": v for f in _present(res) for k, v in M[f].items()
                 if k == "elbo" or (k.startswith(("iw_", "pf_")) and isinstance(v, float))}
    above = {k: v - exact for k, v in estimates.items() if v > exact}
    if not above:
        out = ["Every variational bound and every particle-filter estimate with learned networks lies below the exact "
               "log-likelihood of the data-generating system, as each must on average."]
    else:
        out = ["These estimates lie ABOVE the exact log-likelihood of the data-generating system: " + ", ".join(
            f"{k.replace('_', ' = ')} by {d:.3f}" for k, d in above.items()) + " nats per step (a model's log-likelihood "
            "of a finite test set can exceed the truth's by chance; on average it cannot)."]
    rising = [f.upper() for f in _present(res) if all(M[f][f"iw_{a}"] <= M[f][f"iw_{b}"] for a, b in zip(ks, ks[1:]))]
    flat = [f.upper() for f in _present(res) if f.upper() not in rising]
    out.append(f"The IW bound rises with every step of K for {', '.join(rising) or 'no family'}"
               + (f", not at every step for {', '.join(flat)} (one draw per K)." if flat else "."))
    d = M["lgssm"]["elbo"] - exact if "lgssm" in M else float("nan")
    out.append("" if "lgssm" not in M else f"The fitted LGSSM, the true model class, is {abs(d):.3f} nats per step {'below' if d < 0 else 'above'} "
               "the truth on these sequences (estimation error"
               + (" and sampling noise of the test set)." if d < 0 else "; above it only by the test set's sampling noise)."))
    pt = S["particles_true"]
    first, last = (round(exact - res["true_pf"][f"pf_{p}"], 3) + 0.0 for p in (pt[0], pt[-1]))  # + 0.0: no "-0.000"
    out.append(f"Under the true parameters the particle filter's error falls from {first:.3f} "
               f"nats per step at {pt[0]} particles to {last:.3f} at {pt[-1]}.")
    out.append("A model's distance from the true-parameter line at its best estimate is what its generative networks "
               "lose against the truth in the training time; its ELBO's distance below that estimate is its guide's "
               "inference gap.")
    return " ".join(o for o in out if o)


def _figure(ctx: Context, res: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path, link = ctx.figure("exact")
    S, M = res["sizes"], res["models"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax in (a, b):
        ax.axhline(res["exact_true"], color="k", lw=1.5, label="exact, true parameters")
        if "lgssm" in M:
            ax.axhline(M["lgssm"]["elbo"], color="k", lw=1, ls="--", label="fitted LGSSM (exact)")
        ax.set_xscale("log")
        ax.set_ylabel("log-likelihood per step (nats, data units)")
    for i, f in enumerate(_present(res)):
        color = f"C{i % 10}"
        ks = S["ks"]
        a.plot(ks, [M[f][f"iw_{k}"] for k in ks], "o-", color=color, label=f"{f.upper()} IW_K")
        a.plot([1], [M[f]["elbo"]], "x", color=color, ms=9, label=f"{f.upper()} ELBO")
    a.set_xlabel("K (importance samples)")
    a.set_title("importance-weighted bounds")
    pt = S["particles_true"]
    b.plot(pt, [res["true_pf"][f"pf_{p}"] for p in pt], "s-", color="k", alpha=0.6, label="PF, true parameters")
    for i, f in enumerate(_present(res)):
        color, pm = f"C{i % 10}", _pf_counts(M[f])
        if not pm:
            continue
        b.plot(pm, [M[f][f"pf_{p}"] for p in pm], "o-", color=color, label=f"PF, {f.upper()} networks")
        b.axhline(M[f][f"iw_{max(S['ks'])}"], color=color, lw=1, ls=":", label=f"{f.upper()} IW_{max(S['ks'])}")
    b.set_xlabel("particles")
    b.set_title("bootstrap particle filter")
    for ax in (a, b):
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return link
