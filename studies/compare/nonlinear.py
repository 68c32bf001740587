"""Section "nonlinear": a bootstrap particle filter beside the variational bounds on a nonlinear
system without an exact likelihood.

Data: Gymnasium's Pendulum-v1 under smooth (Ornstein-Uhlenbeck) random torques (``envs.collect``,
policy "ou", as the built-in ``pendulum`` source), its observations (cos theta, sin theta,
theta-dot) plus independent Gaussian noise of std ``NOISE_STD`` in every entry (seeded), so the
observation density is nowhere degenerate. Every family of ``dvae.models.MODELS`` with the project's
defaults is trained for the same budget of training CPU seconds (``_bounds.fit``); on the held-out sequences, per observed step in data
units: its ELBO, its IW bounds for K = 1 .. 1000, and the bootstrap particle filter
(``dvae.infer.smc.model_particle_filter``) with its learned initial state, transition and emission
(the state-space contract), 10 .. 10,000 particles (none for the exact LGSSM, whose ELBO is its
log-likelihood). ``--families`` re-runs some; the others keep their stored results.
"""

from __future__ import annotations

import time

import numpy as np

from studies.compare import (Context, Section, all_families, carried_families, markdown_table, not_run_note,
                             stored_run, to_run)
from studies.compare import _bounds as B
from studies.compare.review import beside
from dvae.files import save_figure
from dvae.models import ModelConfig

NOISE_STD = 0.1
"""Std of the Gaussian noise added to every observed entry (cos, sin: unitless; theta-dot: rad/s)."""


def sizes(quick: bool) -> dict:
    if quick:
        return {"episodes": 40, "steps": 20, "time_limit": 1.0, "ks": [1, 10, 100, 1000],
                "particles": [10, 100, 1000]}
    return {"episodes": 200, "steps": 50, "time_limit": 180.0, "ks": [1, 10, 100, 1000],
            "particles": [10, 100, 1000, 10000]}


def collect_data(episodes: int, steps: int, seed: int):
    """Noisy Pendulum-v1 trajectories as a SequenceData."""
    import envs
    from dvae.data.datasets import from_trajectories

    d = envs.collect("Pendulum-v1", episodes=episodes, steps=steps, policy="ou", seed=seed)
    rng = np.random.default_rng(seed + 1)
    obs = (d["obs"] + NOISE_STD * rng.standard_normal(d["obs"].shape)).astype(np.float32)  # (N, T+1, 3)
    meta = {"env_id": "Pendulum-v1", "seed": seed, "episodes": episodes, "steps": steps, "policy": "ou",
            "noise_std": NOISE_STD}
    return from_trajectories(obs, d["actions"], d["lengths"], "Pendulum-v1 + noise", meta,
                             (d["action_low"], d["action_high"]))


def run(ctx: Context) -> Section:
    from dvae.data import Normalizer

    S = sizes(ctx.quick)
    data = collect_data(S["episodes"], S["steps"], ctx.seed)
    norm = Normalizer.fit(*data.subset("train"))
    test = B.prepare(data, norm, "test")
    sig = {"episodes": S["episodes"], "steps": S["steps"], "seed": ctx.seed, "noise_std": NOISE_STD}

    def legacy(r):  # a run stored before families were recorded one by one held the DMM alone
        same = (r.get("sizes", {}).get("episodes"), r.get("sizes", {}).get("steps"), ctx.seed) == (
            S["episodes"], S["steps"], 0)
        return {"dmm": {"time_limit": r["sizes"]["time_limit"], **r["dmm"]}} if same and "dmm" in r else None

    res = {"sizes": S, "signature": sig, "noise_std": NOISE_STD, "num_test_sequences": len(test[0]),
           "num_test_steps": int(sum(len(x) for x in test[0])), "log_det_per_step": norm.log_det_per_step,
           "models": carried_families(ctx, sig, legacy)}
    for family in to_run(ctx, all_families()):
        model, info = B.fit(family, data, norm, S["time_limit"], ctx.seed, ctx.device)
        t0 = time.perf_counter()
        info.update(B.bounds(model, *test, norm.log_det_per_step, S["ks"], ctx.seed))
        if not getattr(model, "exact", False):
            info.update(B.particle_filter(model, *test, norm.log_det_per_step, S["particles"], ctx.seed))
        info["eval_seconds"] = round(time.perf_counter() - t0, 1)
        info["time_limit"] = S["time_limit"]
        res["models"][family] = info
        ctx.partial(_section(res, ctx.figure("nonlinear")[1]))  # the families so far (the figure comes at the end)
    return _section(res, None, ctx)


def _section(res: dict, figure, ctx=None) -> Section:
    """The section from ``res`` (its models put in order, the missing ones listed), drawing the figure
    with ``ctx`` or linking ``figure``."""
    res["models"] = {f: res["models"][f] for f in all_families() if f in res["models"]}
    res["not_run"] = [f for f in all_families() if f not in res["models"]]
    # a ceiling: x_t = clean_t + noise_t with the noise independent of everything before, so the data's
    # entropy per step is at least the noise's, and no model's expected log-likelihood per step exceeds
    # -H(noise) = -3 (log(2 pi s^2) + 1) / 2
    res["noise_ceiling"] = float(-3 * (0.5 * np.log(2 * np.pi * NOISE_STD ** 2) + 0.5))
    if ctx is not None:
        figure = _figure(ctx, res)
    return Section("nonlinear", "Particle filter beside the bounds on a nonlinear system (noisy Pendulum)",
                   _markdown(res, figure), res)


def restate(res: dict, ctx: Context) -> str:
    """The section's markdown from its stored results (a run stored before families were recorded one by
    one held the DMM alone), linking the figure stored with them."""
    res = dict(res)
    if "models" not in res:
        res["models"] = {"dmm": res.pop("dmm")} if "dmm" in res else {}
    meta = (ctx.previous or {}).get("meta", {})
    res["models"] = {f: m if "run" in m or B.budget_kind(m) == "cpu" else {"run": stored_run(meta), **m}
                     for f, m in res["models"].items()}  # a wall-clock row: when and at what load
    res["not_run"] = [f for f in all_families() if f not in res["models"]]
    return _markdown(res, ctx.figure("nonlinear")[1])


def _counts(m: dict, prefix: str) -> list:
    return sorted(int(k[len(prefix):]) for k in m if k.startswith(prefix) and not k.startswith("seconds"))


def _num(v, spec: str) -> str:
    """A number as ``spec`` formats it, anything else (n/a) as it is."""
    return spec.format(v) if isinstance(v, (int, float)) else str(v)


def _families_table(res: dict) -> str:
    """A row per family: ELBO, the largest-K IW bound and the particle filter at the most particles."""
    rows = []
    for f, m in res["models"].items():
        ks, ps = _counts(m, "iw_"), _counts(m, "pf_")
        run = m.get("run")
        rows.append([f.upper(), m["elbo"], m[f"iw_{max(ks)}"] if ks else m["elbo"],
                     m[f"pf_{max(ps)}"] if ps else float("nan"),
                     B.budget_cell(m, m.get("time_limit", res["sizes"]["time_limit"])), _num(B.cpu_cell(m), "{:.0f}"),
                     f"{m['train_seconds']:.0f}", _num(m["epochs"], "{:g}"), B.stop_cell(m, m.get("time_limit", res["sizes"]["time_limit"])),
                     "the run above" if not run else f"stored: {run.get('date')}, {run.get('commit')}"])
    for f in res.get("not_run", []):
        rows.append([f.upper(), "not run yet", "", "", "", "", "", "", "", ""])
    S = res["sizes"]
    return markdown_table(["family", "ELBO", f"IW, K = {max(S['ks'])} (exact: log p)",
                           f"particle filter, {max(S['particles'])} particles", "budget", "train CPU s",
                           "train wall s", "epochs", "stopped by", "from"], rows)


def _markdown(res: dict, figure: str) -> str:
    fams = f"""Every family, same data, same budget of training seconds ({res['sizes']['time_limit']:.0f} s), log p per
observed step in data units (nats, higher is better; the LGSSM is exact, so its ELBO is its log-likelihood and it has
no filter row):

{_families_table(res)}

{B.budget_note(list(res["models"].values()))}

{beside({f: m[f"iw_{max(_counts(m, 'iw_'))}"] if _counts(m, "iw_") else m["elbo"] for f, m in res["models"].items()},
        f"the held-out IW bound (K = {max(res['sizes']['ks'])}; the LGSSM's exact log p), highest first", True)}

{not_run_note("nonlinear", res.get("not_run", []))}

"""
    if "dmm" not in res["models"]:
        return fams + "The DMM's detailed estimates below need its run: " + not_run_note("nonlinear", ["dmm"])
    return fams + "The DMM in detail.\n\n" + _dmm_markdown(res, figure)


def _dmm_markdown(res: dict, figure: str) -> str:
    S, m = res["sizes"], res["models"]["dmm"]
    rows = [["ELBO", m["elbo"], ""]]
    rows += [[f"IW, K = {k}", m[f"iw_{k}"], m[f"seconds_iw_{k}"]] for k in _counts(m, "iw_")]
    rows += [[f"particle filter, {p} particles", m[f"pf_{p}"], m[f"seconds_pf_{p}"]] for p in _counts(m, "pf_")]
    table = markdown_table(["DMM estimate", "log p per step", "seconds"], rows)
    k_max, p_max = max(_counts(m, "iw_")), max(_counts(m, "pf_"))
    diff = m[f"pf_{p_max}"] - m[f"iw_{k_max}"]
    pf_at_k = m.get(f"pf_{k_max}")
    cmp_same = "" if pf_at_k is None or p_max == k_max else (
        f" At equal numbers of samples ({k_max} particles against K = {k_max}) the filter is "
        f"{'above' if pf_at_k > m[f'iw_{k_max}'] else 'below'} the IW bound by {abs(pf_at_k - m[f'iw_{k_max}']):.3f} nats "
        "per step.")
    if diff > 0:
        which = ("the filter's estimate is the higher (tighter) one. The IW bound's shortfall from log p(x | u) is "
                 "the guide's alone: as a proposal over whole paths, q(z | x, u) is further from the model's posterior "
                 "than the filter's step-by-step proposal with resampling. Taking the filter's value as the model's "
                 f"log-likelihood, its distance from the ELBO, {m[f'pf_{p_max}'] - m['elbo']:.3f} nats per step, "
                 "estimates (from below, as the filter is itself a lower bound on average) the guide's KL to the "
                 "model's posterior, the inference gap, apart from how good the generative model is")
    else:
        which = ("the IW bound is the higher (tighter) one: the guide, which reads the observations, proposes better "
                 "paths than the learned transition does, and what separates the two is the bootstrap filter's own "
                 "Monte Carlo bias")
    return f"""Data: Gymnasium's Pendulum-v1 under Ornstein-Uhlenbeck random torques (`envs.collect`, policy `ou`),
{S['episodes']} episodes of {S['steps']} steps, observations (cos theta, sin theta, theta-dot) plus independent
Gaussian noise of std {res['noise_std']} in every entry (seeded); the loaders' 80/10/10 split. No exact likelihood is
available. A DMM with the project's defaults (z_dim {ModelConfig().z_dim}, RNN width {ModelConfig().rnn_dim}, hidden widths {ModelConfig().transition_dim}; `TrainConfig` defaults, Adam {f"{m['lr']:g}" if 'lr' in m else 'at the default rate'}) trained for at most
{B.budget_cell(m, m.get('time_limit', S['time_limit']))} ({m['train_seconds']:.0f} wall s, {m['epochs']} epochs, best epoch {m['best_epoch']}). On the
same {res['num_test_sequences']} held-out sequences ({res['num_test_steps']} observed steps), per observed step in the
data's units (log-Jacobian {res['log_det_per_step']:.3f} nats per step removed), nats, higher is better; one Monte Carlo
draw per estimate:

{table}

![estimates against K and particles]({figure})

*The IW bound against K and the bootstrap particle filter, of every family with results above, against the number of particles (both log
axes; the exact LGSSM as one line, its log-likelihood), with a ceiling, {res['noise_ceiling']:.3f} nats per step: the negative entropy of the added noise.
Each observation is a noise-free one plus noise independent of everything before it, so the data's entropy per step
is at least the noise's and no model's expected log-likelihood per step can exceed this line.*

All three are estimates of the same number, the learned model's log p(x | u), and all are lower bounds on it on
average: the ELBO for any guide, the IW bound and the filter's log-estimate by Jensen's inequality on unbiased
estimates of p(x | u). The IW bound proposes whole latent paths from the guide q(z | x, u) and weights them; the
filter proposes each step from the learned transition p(z_t | z_{{t-1}}, u_{{t-1}}), weights by the learned emission
and resamples (systematic, when the effective sample size drops below half). Both converge to log p(x | u) as K or
the particles grow, so the gap between them at the largest sizes is the remaining Monte Carlo bias of the looser
one. Here, at {p_max} particles against K = {k_max}, the filter is {diff:+.3f} nats per step from the IW bound:
{which}.{cmp_same} What this does not show: the true log-likelihood of the data (no oracle exists here; the exact
section holds the same estimators against one), or the Monte Carlo spread of each number (one draw each).
"""


def _figure(ctx: Context, res: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path, link = ctx.figure("nonlinear")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (f, m) in enumerate(res["models"].items()):
        c, ks, ps = f"C{i % 10}", _counts(m, "iw_"), _counts(m, "pf_")
        if not ks:  # exact: one line, its log-likelihood
            ax.axhline(m["elbo"], color=c, ls="-.", lw=1, label=f"{f.upper()} exact log p")
            continue
        ax.plot(ks, [m[f"iw_{k}"] for k in ks], "o-", color=c, ms=3, label=f"{f.upper()} IW_K (x: K)")
        ax.plot(ps, [m[f"pf_{p}"] for p in ps], "s--", color=c, ms=3, label=f"{f.upper()} filter (x: particles)")
    ax.axhline(res["noise_ceiling"], color="k", lw=1, ls="--", label="ceiling: -entropy of the observation noise")
    ax.set_xscale("log")
    ax.set_xlabel("K or particles")
    ax.set_ylabel("log-likelihood per step (nats, data units)")
    ax.set_title("noisy Pendulum-v1: bounds and particle filter of every family")
    ax.legend(fontsize=6, loc="best", framealpha=0.8, ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return link
