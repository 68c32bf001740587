"""Section "worldmodels": every family of ``dvae.models.MODELS`` ranked as a world model of
Pendulum-v1 at equal training time.

Data: Gymnasium's Pendulum-v1 under Ornstein-Uhlenbeck random torques (``envs.collect``, policy
"ou", noise-free observations). Each family is trained with the project's defaults for the same
budget of training CPU seconds (``B.fit``) on the same split, then on the same held-out sequences:

- k-step RMSE of open-loop prediction (``dvae.eval.openloop.kstep_report``), data units;
- NLL: the test -ELBO and -IW_K per observed step (nats, data units, lower is better);
- planning score (R_model - R_random) / (R_true - R_random): CEM on the model's imagined rollouts
  (``dvae.planning.model_policy``) against the random policy and CEM on the true simulator, the
  baselines ``dvae plan`` reports, on the same episodes' reset seeds.
"""

from __future__ import annotations

import time

import numpy as np

from studies.compare import Context, Section, all_families, carried_families, markdown_table, not_run_note, to_run
from studies.compare import _bounds as B
from studies.compare.review import REVIEW_SOURCE, REVIEW_TABLE  # noqa: F401  (REVIEW_SOURCE: tests read it here)
from dvae.files import save_figure


def sizes(quick: bool) -> dict:
    if quick:
        return {"episodes": 24, "steps": 16, "time_limit": 1.0, "k": 1, "context": 6, "horizon": 5,
                "plan_episodes": 1, "plan_steps": 3, "plan_horizon": 3, "plan_samples": 16, "plan_iterations": 1}
    return {"episodes": 200, "steps": 50, "time_limit": 120.0, "k": 100, "context": 20, "horizon": 20,
            "plan_episodes": 3, "plan_steps": 100, "plan_horizon": 15, "plan_samples": 200, "plan_iterations": 3}


def collect_data(episodes: int, steps: int, seed: int):
    import envs
    from dvae.data.datasets import from_trajectories

    d = envs.collect("Pendulum-v1", episodes=episodes, steps=steps, policy="ou", seed=seed)
    meta = {"env_id": "Pendulum-v1", "seed": seed, "episodes": episodes, "steps": steps, "policy": "ou"}
    return from_trajectories(d["obs"].astype(np.float32), d["actions"], d["lengths"], "Pendulum-v1", meta,
                             (d["action_low"], d["action_high"]))


def _baselines(S: dict, seed: int) -> dict:
    from dvae.control import PlannerConfig
    from dvae.planning import random_policy, run_episodes, true_policy
    from envs.simulators import true_returns

    pc = PlannerConfig(horizon=S["plan_horizon"], num_samples=S["plan_samples"], iterations=S["plan_iterations"])
    rnd = run_episodes("Pendulum-v1", random_policy(seed), S["plan_episodes"], seed, S["plan_steps"])
    tr = run_episodes("Pendulum-v1", true_policy(true_returns("Pendulum-v1"), "cem", pc, seed), S["plan_episodes"],
                      seed, S["plan_steps"])
    return {"random": float(np.mean(rnd)), "true_model": float(np.mean(tr))}


def _evaluate(model, norm, data, S: dict, seed: int, base: dict) -> dict:
    import pyro

    from dvae.control import PlannerConfig
    from dvae.eval.openloop import kstep_report
    from dvae.planning import model_policy, run_episodes
    from envs.rewards import reward_fn

    out = B.bounds(model, *B.prepare(data, norm, "test"), norm.log_det_per_step, [S["k"]], seed)
    out["nll_elbo"] = -out["elbo"]
    out["nll_iw"] = -out.get(f"iw_{S['k']}", out["elbo"])  # an exact model's ELBO is its log-likelihood
    xs, us = data.subset("test")
    txs, tus = data.subset("train")
    pyro.set_rng_seed(seed)
    rep = kstep_report(model, norm, xs, us, txs, tus, S["context"], S["horizon"], num_samples=32)
    out["kstep_rmse"] = [float(v) for v in rep["kstep_rmse"]]
    out["persistence_rmse"] = [float(v) for v in rep["baselines"]["persistence"]["kstep_rmse"]]
    pc = PlannerConfig(horizon=S["plan_horizon"], num_samples=S["plan_samples"], iterations=S["plan_iterations"])
    t0 = time.perf_counter()
    ret = run_episodes("Pendulum-v1", model_policy(model, norm, reward_fn("Pendulum-v1"), "cem", pc, seed),
                       S["plan_episodes"], seed, S["plan_steps"])
    out["plan_return"] = float(np.mean(ret))
    out["plan_seconds"] = round(time.perf_counter() - t0, 1)
    gap = base["true_model"] - base["random"]
    out["plan_score"] = float((out["plan_return"] - base["random"]) / gap) if gap != 0 else float("nan")
    return out


def run(ctx: Context) -> Section:
    from dvae.data import Normalizer

    S = sizes(ctx.quick)
    data = collect_data(S["episodes"], S["steps"], ctx.seed)
    norm = Normalizer.fit(*data.subset("train"))
    sig = {"sizes": S, "seed": ctx.seed}
    res = {"quick": ctx.quick, "sizes": S, "signature": sig, "families": all_families(), "baselines": _baselines(S, ctx.seed),
           "models": carried_families(ctx, sig)}
    for fam in to_run(ctx, res["families"]):
        model, info = B.fit(fam, data, norm, S["time_limit"], ctx.seed, ctx.device)
        info.update(_evaluate(model, norm, data, S, ctx.seed, res["baselines"]))
        info["time_limit"] = S["time_limit"]
        res["models"][fam] = info
        ctx.partial(_section(res, ctx.figure("worldmodels")[1]))  # the families so far (the figure comes at the end)
    return _section(res, None, ctx)


def _section(res: dict, figure, ctx=None) -> Section:
    """The section from ``res`` (its models put in order, the missing ones listed), drawing the figure
    with ``ctx`` or linking ``figure``."""
    res["models"] = {f: res["models"][f] for f in res["families"] if f in res["models"]}
    res["not_run"] = [f for f in res["families"] if f not in res["models"]]
    if ctx is not None:
        figure = _figure(ctx, res)
    return Section("worldmodels", "Every family as a world model of Pendulum-v1 at equal training time",
                   _markdown(res, figure), res)


def restate(res: dict, ctx: Context) -> str:
    """The section's markdown from its stored results (every family without results listed as not run
    yet), linking the figure stored with them."""
    res = dict(res)
    res["families"] = all_families()
    res["not_run"] = [f for f in res["families"] if f not in res.get("models", {})]
    return _markdown(res, ctx.figure("worldmodels")[1])


def _markdown(res: dict, figure: str) -> str:
    S, base = res["sizes"], res["baselines"]
    order = sorted(res["models"], key=lambda f: res["models"][f]["kstep_rmse"][-1])
    rows = []
    for rank, fam in enumerate(order, 1):
        m = res["models"][fam]
        rows.append([rank, fam.upper(), m["kstep_rmse"][0], m["kstep_rmse"][-1], m["nll_elbo"], m["nll_iw"],
                     m["plan_score"], B.budget_cell(m, m.get("time_limit", S["time_limit"])),
                     (f"{m['train_cpu_seconds']:.0f}" if "train_cpu_seconds" in m else "n/a")
                     + f" / {m['train_seconds']:.0f} / {m['epochs']:g}, {B.stop_cell(m)}",
                     "the run above" if "run" not in m else f"stored: {m['run'].get('date')}, {m['run'].get('commit')}"])
    rows += [["-", f.upper(), "not run yet", "", "", "", "", "", "", ""] for f in res.get("not_run", [])]
    table = markdown_table(["rank (k = H RMSE)", "family", "RMSE k = 1", f"RMSE k = {S['horizon']}", "-ELBO per step",
                            f"-IW_{S['k']} per step", "planning score", "budget", "train CPU s / wall s / epochs, stopped by", "from"], rows)
    return f"""Data: Gymnasium's Pendulum-v1 under Ornstein-Uhlenbeck random torques (`envs.collect`, policy `ou`),
{S['episodes']} episodes of {S['steps']} steps, observations (cos theta, sin theta, theta-dot); the loaders' 80/10/10
split. Every family in `dvae.models.MODELS` is trained with the project's defaults for the same budget,
{S['time_limit']:.0f} s of training CPU time with one torch thread (validation excluded; the best validation epoch
kept), and evaluated on the same held-out sequences: open-loop
k-step RMSE (`dvae.eval.openloop`, context {S['context']}, data units; persistence at k = {S['horizon']}:
{(res['models'][order[0]]['persistence_rmse'][-1] if order else float('nan')):.3f}), the test -ELBO and -IW bound (K = {S['k']}) per observed step
in nats (data units; for the exact LGSSM both are its exact NLL), and the planning score
(R_model - R_random) / (R_true - R_random) of CEM (horizon {S['plan_horizon']}, {S['plan_samples']} candidates,
{S['plan_iterations']} iterations) on the model's imagined rollouts over {S['plan_episodes']} episode(s) of
{S['plan_steps']} steps, with R_random = {base['random']:.1f} and R_true = {base['true_model']:.1f} (CEM on the
simulator itself), as `dvae plan` reports them. Ranked by the RMSE at k = {S['horizon']}:

{table}

{_headline(res)}

{not_run_note("worldmodels", res.get("not_run", []), " --quick" if res.get("quick") else "")}

![k-step RMSE of every family]({figure})

*Open-loop RMSE against the prediction step k for every family, with the persistence forecast.*

{_review(res)}

What this does not show: more than one seed or training run per family (one each), or the spread of the planning
returns over more episodes; equal training time favours the cheaper families (a family that is slower per epoch
sees fewer epochs) where the budget, not early stopping, ends training (the table says which did).
{B.budget_note(list(res["models"].values()))}
"""


def _headline(res: dict) -> str:
    """Which family leads on each measure and which beat persistence, read off the results."""
    M, H = res["models"], res["sizes"]["horizon"]
    if not M:
        return ""
    def best(key, sign=1):
        ok = [f for f in M if M[f][key] == M[f][key]] if key != "kstep_rmse" else list(M)
        value = (lambda f: M[f][key][-1]) if key == "kstep_rmse" else (lambda f: sign * M[f][key])
        return min(ok, key=value).upper() if ok else "none"
    beat = [f.upper() for f in M if M[f]["kstep_rmse"][-1] < M[f]["persistence_rmse"][-1]]
    top = best("plan_score", -1)
    top_score = M[top.lower()]["plan_score"] if top != "none" else float("nan")
    near = [f.upper() for f in M if f.upper() != top and abs(M[f]["plan_score"] - top_score) < PLAN_TIE]
    tie = (f" ({', '.join(near)} within {PLAN_TIE} of it: {res['sizes']['plan_episodes']} planning episode(s) do not "
           "separate them)") if near else ""
    return (f"Lowest k = {H} RMSE: {best('kstep_rmse')}; lowest test -IW bound: {best('nll_iw')}; highest planning "
            f"score: {top}, {top_score:.3f}{tie}. Below the persistence forecast at k = {H}: "
            f"{', '.join(beat) if beat else 'no family'}" + (f" ({len(beat)} of {len(M)})." if beat else "."))


PLAN_TIE = 0.01
"""Planning scores closer than this are called a tie in the prose (the returns of a few episodes)."""


def _figure(ctx: Context, res: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path, link = ctx.figure("worldmodels")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ks = None
    for i, (fam, m) in enumerate(res["models"].items()):
        ks = np.arange(1, len(m["kstep_rmse"]) + 1)
        ax.plot(ks, m["kstep_rmse"], "o-", ms=3, color=f"C{i % 10}", label=fam.upper())
    if ks is not None:
        ax.plot(ks, next(iter(res["models"].values()))["persistence_rmse"], "k--", lw=1, label="persistence")
    ax.set_xlabel("prediction step k")
    ax.set_ylabel("RMSE (data units)")
    ax.set_title("Pendulum-v1: open-loop prediction error of every family")
    ax.legend(fontsize=8, ncol=2, framealpha=0.8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return link


def _review(res: dict) -> str:
    """The review's ordering (its README's table) beside ours, on the families both have."""
    M = res["models"]
    by_rmse = sorted(REVIEW_TABLE, key=lambda r: r[2])
    table = markdown_table(["review's model", "RMSE", "PESQ", "STOI", "our family"],
                           [[m, f"{rmse:.4f}", f"{pesq:.2f}", f"{stoi:.2f}", f or "-"] for m, f, rmse, pesq, stoi in by_rmse])
    shared = [f for _, f, *_ in by_rmse if f in M]
    ours = sorted(shared, key=lambda f: M[f]["kstep_rmse"][-1])
    ours_nll = sorted(shared, key=lambda f: M[f]["nll_iw"])
    ours_plan = sorted(shared, key=lambda f: -M[f]["plan_score"])
    rho = _spearman([f for _, f, *_ in by_rmse if f in shared], ours)
    review = " < ".join(m for m, *_ in by_rmse)
    missing = [m for m, f, *_ in REVIEW_TABLE if f is None or f not in M]
    return f"""The review's own ordering. The reference code of the DVAE review ({REVIEW_SOURCE[1]};
[README]({REVIEW_SOURCE[0]})) reports speech re-synthesis on WSJ0 (train wsj0_si_tr_s, test wsj0_si_et_05; Adam,
batch 32), averages over the test set, RMSE lower and PESQ/STOI higher is better, as copied here from the README:

{table}

By its RMSE: {review}. On the families both studies have ({', '.join(f.upper() for f in shared) or 'none'}), the
review's order (by RMSE) is {' < '.join(f.upper() for f in shared) or '-'}; ours by k = {res['sizes']['horizon']}
RMSE is {' < '.join(f.upper() for f in ours) or '-'} and by the test IW bound {' < '.join(f.upper() for f in ours_nll) or '-'}
(lower first), by the planning score {', '.join(f.upper() for f in ours_plan) or '-'} (higher first).
{f"Spearman's rank correlation between the review's order and ours by k = {res['sizes']['horizon']} RMSE: {rho:.2f} (1: the same order, -1: reversed)." if rho == rho else ""} {('Not in this comparison: ' + ', '.join(missing) + ' (not run here: the study runs each family with its defaults, the RVAE causal; or not run yet).') if missing else ''}
The tasks differ (spectrogram re-synthesis against a controlled pendulum's prediction and planning), as do the
budgets (the review trains to convergence), so only the orderings are set side by side."""


def _spearman(a: list, b: list) -> float:
    """Spearman's rank correlation of two orderings of the same items (no ties); NaN for fewer than 2."""
    n = len(a)
    if n < 2 or sorted(a) != sorted(b):
        return float("nan")
    d2 = sum((i - b.index(x)) ** 2 for i, x in enumerate(a))
    return 1 - 6 * d2 / (n * (n * n - 1))
