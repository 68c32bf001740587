"""Section "estimators": gradient estimators of the bound, on data from a linear-Gaussian system.

The estimators of :mod:`dvae.infer.estimators` (analytic-KL ELBO, sampled-KL ELBO, the importance-
weighted bound, Tensor Monte Carlo) on two DMMs (the structured ``dks`` guide and the ``mean_field``
guide, where TMC applies), each at initialisation and after a brief training with the default
estimator: the bound's value per step (mean and standard error over repeated draws), the total
variance of its gradient, its signal-to-noise ratio and the time per gradient evaluation. Then a race:
the same initial DMM trained for a fixed time with each estimator, its held-out bounds against time.
A tiny DMM (1-D latent, 3 steps) whose log p(x) is a grid sum checks which TMC values are bounds.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pyro
import torch

from studies.compare import Context, Section, markdown_table
from dvae.data.batch import collate
from dvae.data.batching import batches
from dvae.eval.exact import LGSSMParams, kalman_log_likelihood, sample_lgssm
from dvae.files import save_figure
from dvae.infer.estimators import estimator_programs, make_estimator, measure_estimator, tmc_applies
from dvae.infer.evaluation import evaluate
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model

RACE_LR = 3e-3  # the fixed-time race's own Adam learning rate

TITLE = "Gradient estimators: value, gradient variance, time"


def _sizes(quick: bool) -> dict:
    if quick:
        return dict(n_train=16, n_valid=8, n_eval=4, steps=6, z_dim=2, hidden=16, train_seconds=0.5, train_epochs=2,
                    draws=3, iw=[2], tmc=[2], race=["analytic", "sampled", "iw"], race_k=2, race_seconds=0.4,
                    race_evals=2, eval_iw=4, grid_copies=32, grid_repeats=3, grid_k=[4])
    return dict(n_train=256, n_valid=64, n_eval=32, steps=20, z_dim=4, hidden=32, train_seconds=40.0,
                train_epochs=10 ** 6, draws=40, iw=[4, 16, 64], tmc=[2, 4, 8], race=["analytic", "sampled", "iw"],
                race_k=8, race_seconds=40.0, race_evals=8, eval_iw=64, grid_copies=256, grid_repeats=10,
                grid_k=[4, 16])


def _lgssm_data(n: int, steps: int, rng: np.random.Generator, params: LGSSMParams):
    xs, us, _ = sample_lgssm(params, n, steps, rng)  # (N, L, x_dim), (N, L, u_dim)
    logp = np.array([kalman_log_likelihood(params, x, u) for x, u in zip(xs, us)])  # (N,) exact log p(x | u)
    return [x.astype(np.float32) for x in xs], [u.astype(np.float32) for u in us], logp


def _params() -> LGSSMParams:
    from envs.linear_gaussian import LinearGaussianParams

    return LGSSMParams(*LinearGaussianParams().matrices())  # the system of dvae/LinearGaussian-v0, no clipping


def _dmm(guide: str, s: dict, seed: int, device) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(model="dmm", x_dim=2, u_dim=1, z_dim=s["z_dim"], rnn_dim=s["hidden"],
                      transition_dim=s["hidden"], emission_dim=s["hidden"], guide=guide)
    return build_model(cfg).to(device)


def _measure_all(model, batch, s: dict, seed: int, point: str, guide: str, exact: float) -> list:
    configs = [("analytic", 1), ("sampled", 1)] + [("iw", k) for k in s["iw"]] + [("tmc", k) for k in s["tmc"]]
    applies, _ = tmc_applies(model)
    rows = []
    for i, (name, k) in enumerate(configs):
        st = measure_estimator(model, batch, name, k, draws=s["draws"], seed=seed + 7919 * i)
        row = {"model": f"dmm-{guide}", "point": point, **st.row(), "exact_per_step": exact,
               "is_bound": name != "tmc" or applies}
        rows.append(row)
    ref = next(r for r in rows if r["estimator"] == "analytic")
    for r in rows:
        r["var_ratio"] = r["grad_var"] / ref["grad_var"]
        r["time_ratio"] = r["ms_per_step"] / ref["ms_per_step"]
    return rows


def _race(model0_state, guide, s, data, device, seed) -> list:
    """Train copies of one initial DMM with each estimator for ``race_seconds`` of gradient steps (Adam, lr
    3e-3, batches of 16, gradient norm clipped at 10, no annealing); evaluate the held-out ELBO and IW
    bound per step at ``race_evals`` times (evaluation time not counted)."""
    xs, us, vxs, vus = data
    out = []
    for j, name in enumerate(s["race"]):
        k = s["race_k"] if name in ("iw", "tmc") else 1
        model = _dmm(guide, s, seed, device)
        model.load_state_dict(model0_state)
        pyro.clear_param_store()
        pyro.set_rng_seed(seed + 31 * j)
        prog_model, prog_guide = estimator_programs(model, name, k)
        elbo = make_estimator(name, k, model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=RACE_LR)
        marks = [s["race_seconds"] * (i + 1) / s["race_evals"] for i in range(s["race_evals"])]
        curve, spent, updates, epoch = [], 0.0, 0, 0

        def record():
            ev = evaluate(model, vxs, vus, iw_samples=s["eval_iw"], device=device)
            curve.append({"seconds": spent, "updates": updates, "valid_elbo_per_step": -ev["neg_elbo_per_step"],
                          "valid_iw_per_step": -ev["nll_iw_per_step"]})
            model.train()

        record()
        while marks:
            gen = torch.Generator().manual_seed(seed * 1009 + epoch)
            for batch in batches(xs, us, 16, generator=gen):
                batch = batch.to(device)
                n = int(batch.lengths.sum())
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                elbo.loss_and_grads(prog_model, prog_guide, batch)
                for p in params:  # the per-step objective: divide the unscaled bound's gradient by the steps
                    if p.grad is not None:
                        p.grad /= n
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                opt.step()
                if params[0].is_cuda:
                    torch.cuda.synchronize()  # the clock stops when the update has run (on CUDA, asynchronously)
                spent += time.perf_counter() - t0
                updates += 1
                if spent >= marks[0]:
                    marks.pop(0)
                    record()
                    if not marks:
                        break
            epoch += 1
        out.append({"estimator": name, "particles": k, "curve": curve})
    return out


def grid_log_p(model, x: torch.Tensor, n: int = 801, lim: float = 8.0) -> float:
    """log p(x) of a 1-D-latent, control-free DMM by a grid sum over z (forward recursion), float64."""
    z = torch.linspace(-lim, lim, n, dtype=torch.float64, device=x.device)[:, None]  # (n, 1)
    log_dz = math.log(float(z[1, 0] - z[0, 0]))
    normal = torch.distributions.Normal
    with torch.no_grad():
        loc, scale = model.emitter(z)  # (n, x_dim)
        emit = lambda t: normal(loc, scale).log_prob(x[t]).sum(-1)  # noqa: E731 (n,)
        loc0, scale0 = model.initial(1)
        la = normal(loc0, scale0).log_prob(z).sum(-1) + emit(0) + log_dz  # (n,)
        tloc, tscale = model.transition(z)  # (n, 1): row i is p(z_t | z_{t-1} = z_i)
        log_k = normal(tloc[:, None], tscale[:, None]).log_prob(z[None]).sum(-1) + log_dz  # (n_prev, n)
        for t in range(1, x.shape[0]):
            la = torch.logsumexp(la[:, None] + log_k, 0) + emit(t)
        return float(torch.logsumexp(la, 0))


def _grid_check(s: dict, seed: int) -> list:
    """TMC and IW against a grid-sum log p(x) on a tiny DMM (z_dim 1, x_dim 1, 3 steps, float64): the
    mean over draws of each bound on one sequence, from ``grid_copies`` copies of it in a batch."""
    x = torch.tensor([[0.5], [1.0], [0.2]], dtype=torch.float64)  # (T, x_dim)
    rows = []
    for guide in ("mean_field", "dks"):
        torch.manual_seed(seed + 1)
        model = build_model(ModelConfig(model="dmm", x_dim=1, u_dim=0, z_dim=1, rnn_dim=8, transition_dim=8,
                                        emission_dim=8, guide=guide)).double()
        log_p = grid_log_p(model, x)
        batch = collate([x] * s["grid_copies"])
        configs = [("sampled", 1)] + [(name, k) for k in s["grid_k"] for name in ("iw", "tmc")]
        for name, k in configs:
            pyro.clear_param_store()
            pyro.set_rng_seed(seed + 13 * k + len(rows))
            prog_model, prog_guide = estimator_programs(model, name, k)
            elbo = make_estimator(name, k, model)
            with torch.no_grad():
                means = np.array([-elbo.loss(prog_model, prog_guide, batch) / s["grid_copies"]
                                  for _ in range(s["grid_repeats"])])  # each: the mean over the copies
            se = means.std(ddof=1) / math.sqrt(len(means))
            rows.append({"guide": guide, "estimator": name, "particles": k, "mean": float(means.mean()),
                         "se": float(se), "log_p": log_p, "gap": float(means.mean() - log_p),
                         "draws": s["grid_copies"] * s["grid_repeats"]})
    return rows


def _figures(ctx: Context, rows: list, race: list):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter, ScalarFormatter

    def k_axis(ax, ks):
        ax.set_xscale("log")
        ax.set_xticks(sorted(ks))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())

    path, link = ctx.figure("estimators-variance")
    points = ["init", "trained"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), squeeze=False)
    colors = {"dmm-dks": "C0", "dmm-mean_field": "C1"}
    ks = {r["particles"] for r in rows if r["estimator"] in ("iw", "tmc")}
    for i, point in enumerate(points):
        ax_v, ax_g = axes[i]
        for model in colors:
            sub = [r for r in rows if r["point"] == point and r["model"] == model]
            if not sub:
                continue
            c = colors[model]
            for est, ls, mk in (("iw", "-", "o"), ("tmc", "--", "s")):
                pts = sorted((r["particles"], r["exact_per_step"] - r["value_mean"], r["value_se"], r["grad_var"],
                              r["is_bound"]) for r in sub if r["estimator"] == est)
                if pts:
                    k, gap, se, g, bound = map(np.array, zip(*pts))
                    label = f"{model} {est}" + ("" if bound.all() else " (not a bound)")
                    ax_v.errorbar(k, gap, yerr=2 * se, color=c, ls=ls, marker=mk, label=label)
                    ax_g.plot(k, g, color=c, ls=ls, marker=mk, label=label)
            for est, ls in (("analytic", ":"), ("sampled", "-.")):
                r = next(r for r in sub if r["estimator"] == est)
                ax_v.axhline(r["exact_per_step"] - r["value_mean"], color=c, ls=ls, lw=1, label=f"{model} {est} ELBO")
                ax_g.axhline(r["grad_var"], color=c, ls=ls, lw=1, label=f"{model} {est}")
        ax_v.set(yscale="log", xlabel="K (particles / samples per step)",
                 ylabel="exact log p(x) - bound, per step (nats)", title=f"distance of the bound to log p(x), {point}")
        ax_g.set(yscale="log", xlabel="K (particles / samples per step)", ylabel="gradient variance (trace)",
                 title=f"gradient variance, {point}")
        k_axis(ax_v, ks)
        k_axis(ax_g, ks)
    for ax in axes[1]:
        ax.legend(fontsize=6, loc="best", framealpha=0.6)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)

    rpath, rlink = ctx.figure("estimators-race")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    exact = race[0]["exact_valid_per_step"]
    for j, r in enumerate(race):
        t = [c["seconds"] for c in r["curve"]]
        label = r["estimator"] + (f" K={r['particles']}" if r["particles"] > 1 else "")
        axes[0][0].plot(t, [exact - c["valid_elbo_per_step"] for c in r["curve"]], marker="o", color=f"C{j}",
                        label=label)
        axes[0][1].plot(t, [exact - c["valid_iw_per_step"] for c in r["curve"]], marker="o", color=f"C{j}",
                        label=label)
    for ax, what in zip(axes[0], ("held-out ELBO", f"held-out IW bound")):
        ax.set(yscale="log", xlabel="training time (s, gradient steps only)",
               ylabel="exact log p(x) - bound, per step (nats)", title=f"{what}: distance to log p(x)")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, rpath, dpi=110)
    plt.close(fig)
    return link, rlink


def _fmt(mean, se):
    return f"{mean:.3f} ± {se:.3f}"


def run(ctx: Context) -> Section:
    s = _sizes(ctx.quick)
    load_start = os.getloadavg()[0]
    device = torch.device(ctx.device)
    rng = np.random.default_rng(ctx.seed)
    params = _params()
    xs, us, _ = _lgssm_data(s["n_train"], s["steps"], rng, params)
    vxs, vus, vlogp = _lgssm_data(s["n_valid"], s["steps"], rng, params)
    ex, eu, elogp = _lgssm_data(s["n_eval"], s["steps"], rng, params)
    eval_batch = collate([torch.from_numpy(x) for x in ex], [torch.from_numpy(u) for u in eu]).to(device)
    exact_eval = float(elogp.sum() / (len(ex) * s["steps"]))
    exact_valid = float(vlogp.sum() / (len(vxs) * s["steps"]))

    rows, train_info, init_states = [], {}, {}
    for guide in ("dks", "mean_field"):
        model = _dmm(guide, s, ctx.seed, device)
        init_states[guide] = {k: v.clone() for k, v in model.state_dict().items()}
        if guide == "dks":  # the initial point once: for the structured guide
            rows += _measure_all(model, eval_batch, s, ctx.seed, "init", guide, exact_eval)
        trainer = Trainer(model, TrainConfig(epochs=s["train_epochs"], time_limit=s["train_seconds"], seed=ctx.seed,
                                             patience=0, anneal_epochs=1.0), (xs, us), (vxs, vus), device=device)
        hist = trainer.fit(progress=False)
        train_info[guide] = {"epochs": len(hist), "seconds": trainer.state["train_seconds"],
                             "valid_neg_elbo_per_step": hist[-1]["valid_neg_elbo_per_step"] if hist else math.nan}
        rows += _measure_all(model, eval_batch, s, ctx.seed, "trained", guide, exact_eval)

    race = _race(init_states["dks"], "dks", s, (xs, us, vxs, vus), device, ctx.seed)
    for r in race:
        r["exact_valid_per_step"] = exact_valid
    grid = _grid_check(s, ctx.seed)
    fig_var, fig_race = _figures(ctx, rows, race)
    results = {"sizes": s, "load_average": [load_start, os.getloadavg()[0]], "cpu_count": os.cpu_count(), "exact_eval_per_step": exact_eval, "exact_valid_per_step": exact_valid,
               "training": train_info, "rows": rows, "race": race, "grid": grid}
    return Section(key="estimators", title=TITLE, markdown=_markdown(results, fig_var, fig_race), results=results)


def _markdown(res: dict, fig_var: str, fig_race: str) -> str:
    s, rows = res["sizes"], res["rows"]
    header = ["model", "at", "estimator", "K", "bound per step (mean ± s.e.)", "gradient variance",
              "variance / analytic", "SNR", "ms per step", "time / analytic"]

    def table(point):
        out = []
        for r in rows:
            if r["point"] != point:
                continue
            est = r["estimator"] + ("" if r["is_bound"] else " (not a bound)")
            out.append([r["model"], point, est, r["particles"], _fmt(r["value_mean"], r["value_se"]),
                        f"{r['grad_var']:.4g}", r["var_ratio"], r["grad_snr"], f"{r['ms_per_step']:.1f}",
                        r["time_ratio"]])
        return markdown_table(header, out, fmt="{:.2f}")

    def get(model, point, est, k=None):
        for r in rows:
            if r["model"] == model and r["point"] == point and r["estimator"] == est and (k is None or r["particles"] == k):
                return r
        return None

    tr = res["training"]
    lines = [
        "The estimators of `dvae.infer.estimators` (`make_estimator`, `measure_estimator`) on DMMs fitted to data "
        f"from the linear-Gaussian system of `dvae/LinearGaussian-v0` (2-D latent, 2-D observation, 1-D control; "
        f"{s['n_train']} training sequences of {s['steps']} steps). Every figure is per real step of one held-out "
        f"batch of {s['n_eval']} sequences, whose exact log-likelihood (Kalman filter) is "
        f"**{res['exact_eval_per_step']:.3f} nats per step**: every true bound sits below it. Two DMMs "
        f"(z_dim {s['z_dim']}, hidden sizes {s['hidden']}): the structured `dks` guide q(z_t | z_{{t-1}}, x_{{t:T}}) "
        "and the `mean_field` guide q(z_t | x_{t:T}) (where TMC applies), measured after training "
        f"with the default estimator (the trainer, analytic KL, {s['train_seconds']:.0f} s of updates: "
        + ", ".join(f"{g} {v['epochs']} epochs, held-out -ELBO {v['valid_neg_elbo_per_step']:.3f}"
                    for g, v in tr.items()) + "), and the dks DMM also at initialisation.",
        "",
        f"Definitions (`EstimatorStats`): each estimator is drawn R = {s['draws']} times at fixed parameters "
        "on the per-step (unscaled) programs; *bound* is the estimator's objective (ELBO for analytic and "
        "sampled, the K-particle importance-weighted bound for iw, the Tensor Monte Carlo bound with K "
        "samples per step for tmc), divided by the number of real steps; *gradient variance* is the trace of "
        "the covariance over draws of the gradient of that per-step objective with respect to all parameters; "
        "*SNR* is |mean gradient| / sqrt(gradient variance); *ms per step* is the median time of one "
        "objective-and-gradient evaluation (forward and backward, no optimiser update) with 1 torch thread "
        "when run as below (per-step programs for every estimator; the trainer itself runs the time-vectorized "
        "form, faster for the analytic estimator). iw with K = 1 would be the sampled ELBO draw by draw "
        "(`tests/infer/test_estimators.py`), so K starts at 4. The machine's 1-minute load average was "
        f"{res['load_average'][0]:.1f} when the section started and {res['load_average'][1]:.1f} when it ended, on "
        f"{res['cpu_count']} cores: the time columns carry that contention (differences of a few tens of percent "
        "between neighbouring rows are within it).",
        "",
        "### At initialisation",
        "",
        table("init"),
        "",
        "### After training",
        "",
        table("trained"),
        "",
        f"![bound and gradient variance against K]({fig_var})",
        "",
        "*Left: how far each estimator's bound per step lies below the exact log-likelihood of the batch, "
        "against K (log scale; bars: 2 s.e.; the ELBO estimators as horizontal lines; a value that is not a bound "
        "can fall below the others without being closer to the truth). Right: the gradient variance against K. "
        "Top: the dks DMM at initialisation; bottom: both DMMs after training.*",
        "",
    ]
    # prose from the numbers
    prose = []
    for point in ("init", "trained"):
        a, sm = get("dmm-dks", point, "analytic"), get("dmm-dks", point, "sampled")
        diff = a["value_mean"] - sm["value_mean"]
        se = math.hypot(a["value_se"], sm["value_se"])
        verdict = ("consistent with their equal expectations" if abs(diff) < 3 * se
                   else "more than 3 standard errors apart although their expectations are equal")
        prose.append(f"At {point} (dks guide) the analytic and sampled ELBO differ by {diff:+.3f} nats per step "
                     f"({abs(diff) / se:.1f} standard errors of the difference: {verdict}), and the analytic "
                     f"KL's gradient variance is {a['grad_var'] / sm['grad_var']:.2f} times the sampled one's.")
    iw = sorted((r for r in rows if r["model"] == "dmm-dks" and r["point"] == "trained" and r["estimator"] == "iw"),
                key=lambda r: r["particles"])
    if len(iw) >= 2:
        lo, hi = iw[0], iw[-1]
        prose.append(f"After training, the IW bound rises from {lo['value_mean']:.3f} (K = {lo['particles']}) to "
                     f"{hi['value_mean']:.3f} (K = {hi['particles']}) nats per step against the exact "
                     f"{res['exact_eval_per_step']:.3f}, and its gradient variance goes from "
                     f"{lo['grad_var']:.4g} to {hi['grad_var']:.4g} while the time per step goes from "
                     f"{lo['ms_per_step']:.1f} to {hi['ms_per_step']:.1f} ms (the K particles are one vectorized "
                     "pass). Note the variance is that of the gradient of a *different* objective for each K: a "
                     "smaller variance at large K says the IWAE gradient is less noisy, not that it points "
                     "where the ELBO's does (for the guide's parameters its signal also shrinks as K grows, "
                     "Rainforth et al. 2018; the SNR column shows the overall ratio).")
    tmc_mf = [r for r in rows if r["model"] == "dmm-mean_field" and r["estimator"] == "tmc" and r["point"] == "trained"]
    tmc_dks = [r for r in rows if r["model"] == "dmm-dks" and r["estimator"] == "tmc" and r["point"] == "trained"]
    if tmc_mf and tmc_dks:
        best_mf, best_dks = max(tmc_mf, key=lambda r: r["particles"]), max(tmc_dks, key=lambda r: r["particles"])
        iw_mf = get("dmm-mean_field", "trained", "iw", best_mf["particles"])
        cmp_iw = (f" (the IW bound with the same K: {iw_mf['value_mean']:.3f})" if iw_mf else "")
        above = [g for g in res["grid"] if g["guide"] == "dks" and g["estimator"] == "tmc" and g["gap"] > 3 * g["se"]]
        grid_says = (f"the grid check below measures it {above[-1]['gap']:.3f} nats above log p(x) with K = "
                     f"{above[-1]['particles']}" if above else
                     "the grid check below did not resolve the excess at its sizes")
        prose.append(f"TMC with K = {best_mf['particles']} samples per step on the mean-field DMM reaches "
                     f"{best_mf['value_mean']:.3f} nats per step{cmp_iw}, at {best_mf['ms_per_step']:.1f} ms per "
                     f"step. On the dks DMM the same estimator gives {best_dks['value_mean']:.3f} against the "
                     f"exact {res['exact_eval_per_step']:.3f}: there it is marked *not a bound* — Pyro draws "
                     "sample k of z_t from particle k of z_{t-1} but scores every pair (j, k) with "
                     "q(z_t^k | z_{t-1}^j), which is not the density the draws came from, so its expectation "
                     f"is not below log p(x) in general ({grid_says}).")
    lines += [" ".join(prose), ""]

    grid = res["grid"]
    lines += ["### Which TMC values are bounds: a grid-sum check",
              "",
              "A tiny DMM (1-D latent, 1-D observation, no control, hidden sizes 8, at initialisation, float64) on "
              "one 3-step sequence, whose log p(x) is a sum over a 801-point grid of z per step (forward "
              "recursion). Each row is the mean of the bound over "
              f"{grid[0]['draws']} independent draws (copies of the sequence in one batch), with its standard "
              "error from the spread of the batch means. A bound must be at most log p(x) (gap <= 0 within "
              "error); for independent per-step proposals (mean field) E[TMC_K] >= E[IW_K] also holds "
              "(TMC averages the IW estimate over every re-pairing of the same per-step samples, and log is "
              "concave).",
              "",
              markdown_table(["guide", "estimator", "K", "mean bound (nats)", "s.e.", "grid log p(x)", "gap"],
                             [[g["guide"], g["estimator"], g["particles"], g["mean"], g["se"], g["log_p"], g["gap"]]
                              for g in grid], fmt="{:.3f}"),
              ""]
    race = res["race"]
    lines += ["### Training for a fixed time",
              "",
              f"The dks DMM from the same initialisation trained for {s['race_seconds']:.0f} s of gradient steps "
              f"with each estimator (own loop: Adam lr {RACE_LR:g}, batches of 16, gradient norm clipped at 10, no KL "
              f"annealing, per-step programs for all; not TMC, which is no bound with this guide), evaluated on {s['n_valid']} held-out sequences at "
              f"{s['race_evals']} times (held-out ELBO with the analytic KL, and the IW bound with "
              f"{s['eval_iw']} samples; evaluation time not counted). Exact: {res['exact_valid_per_step']:.3f} "
              "nats per step.",
              "",
              markdown_table(["estimator", "K", "updates", "held-out ELBO per step", "held-out IW bound per step"],
                             [[r["estimator"], r["particles"], r["curve"][-1]["updates"],
                               r["curve"][-1]["valid_elbo_per_step"], r["curve"][-1]["valid_iw_per_step"]]
                              for r in race]),
              "",
              f"![held-out bounds against training time]({fig_race})",
              "",
              "*How far the held-out bounds lie below the exact log-likelihood (log scale) against training time, for each estimator (one run each, one seed: differences "
              "of a few hundredths of a nat are within the run-to-run spread, which this section does not "
              "measure).*",
              ""]
    best = max(race, key=lambda r: r["curve"][-1]["valid_iw_per_step"])
    lines += [f"After {s['race_seconds']:.0f} s the highest held-out IW bound is {best['estimator']}'s "
              f"({best['curve'][-1]['valid_iw_per_step']:.3f} nats per step after {best['curve'][-1]['updates']} "
              "updates). What this does not show: other model sizes, sequence lengths or learning rates, "
              "or the spread over seeds; the time figures are one CPU thread on a shared machine.", ""]
    return "\n".join(lines)
