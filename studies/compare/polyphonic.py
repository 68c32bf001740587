"""The polyphonic music benchmarks: each model family trained with ``dvae train``'s defaults for a fixed
budget of training CPU seconds on Nottingham, MuseData and Piano-midi.de, scored on the test split,
beside published figures.

Each run trains with exactly the configs of ``dvae train --data PICKLE --model FAMILY`` (the train
verb's settings, ``dvae.fitting.train_options``, and ``dvae.fitting.new_run_config``: the project's default hyperparameters, nothing
else changed) for BUDGET seconds of the process's CPU time with one torch thread, validation excluded
(``studies.compare.budget.CpuBudget``; a wall-clock ``--time-limit`` would give fewer updates on a
busier machine), then is scored as ``dvae eval RUN --split test --iw-samples K`` scores it. The data is not part
of the library: the section reads the pickles from ``ctx.polyphonic_dir`` (``--polyphonic-dir``) and is
skipped without it; it uses whichever of the three file names exist there.

The published figures (``PUBLISHED``) are citations, not results of this code: each names where it was
read. They come from models trained to convergence; ours from minutes
of one CPU thread, which the tables say in their budget column (with its kind: CPU seconds, or wall
seconds for runs stored before budgets were CPU time).

Every family of ``dvae.models.MODELS`` that models binary data runs (``families()``; the LGSSM, Gaussian
only, does not), each with the same budget. ``--families`` re-runs some; the runs of the others are kept
from the stored results when they used the same budget, K and mode, and a family with none shows as
not run yet.

Quick mode (``ctx.quick``): a few short sequences of each file (written to ``ctx.work_dir``), one epoch,
K = 4; a smoke test of the pipeline, its numbers mean nothing.
"""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path
from typing import List, Optional

from studies.compare import COMMAND, Context, Section, all_families, markdown_table, stored_run, to_run
from studies.compare import _bounds as B
from studies.compare.budget import train_best
from studies.compare.review import beside
from dvae.errors import DataError
from dvae.files import atomic_write, save_figure

KEY = "polyphonic"
TITLE = "Polyphonic music: the model families on Nottingham, MuseData and Piano-midi.de"

DATASETS = (("Nottingham", "Nottingham.pickle"), ("MuseData", "MuseData.pickle"),
            ("Piano-midi.de", "Piano-midi.de.pickle"))


def families() -> List[str]:
    """The families that model the binary piano rolls: those whose model builds with a Bernoulli emitter."""
    from dvae.models import ModelConfig, build_model

    out = []
    for f in all_families():
        try:
            build_model(ModelConfig(f, x_dim=88, likelihood="bernoulli"))
        except (ValueError, NotImplementedError, TypeError):
            continue
        out.append(f)
    return out

FULL_BUDGET_S = 210.0
"""Training CPU seconds per run in full mode (one torch thread; validation and the test evaluation
come on top)."""
FULL_IW_SAMPLES = 10
QUICK_BUDGET_S = 5.0
QUICK_IW_SAMPLES = 4
QUICK_SEQUENCES = {"train": 6, "valid": 2, "test": 3}
QUICK_STEPS = 24

_WIZWAND_DMM = "https://www.wizwand.com/paper/68fa62fe1e209131ce9fc117"
_WIZWAND_SRNN = "https://www.wizwand.com/paper/68fa62d71e209131ce9fb88f"
_VRNN_ABSTRACT = "https://www.sciencestack.ai/paper/1506.02216"
_VRAE_ABSTRACT = "https://www.sciencestack.ai/paper/1412.6581"

PUBLISHED: List[dict] = [
    # figures read in a stored copy of the page named in "source"; "not found": looked for, not found
    *[{"model": "DMM (Krishnan, Shalit & Sontag 2017)", "family": "dmm", "dataset": d, "value": v,
       "paper": "Structured Inference Networks for Nonlinear State Space Models, AAAI 2017, table of "
                "polyphonic test results",
       "source": _WIZWAND_DMM,
       "note": "a listing of the paper's benchmark results; one figure per data set, without saying which row "
               "of the paper's table (guide, DMM or DMM-Aug) it is"}
      for d, v in (("Nottingham", 2.77), ("MuseData", 6.83), ("Piano-midi.de", 7.83))],
    *[{"model": "SRNN (Fraccaro et al. 2016)", "family": "srnn", "dataset": d, "value": v,
       "paper": "Sequential Neural Models with Stochastic Layers, NIPS 2016, table of polyphonic test results",
       "source": _WIZWAND_SRNN,
       "note": "a listing of the paper's benchmark results; the paper's SRNN (the smoothing guide with the "
               "residual mean) beside our SRNN with the project's defaults"}
      for d, v in (("Nottingham", 2.94), ("MuseData", 6.28), ("Piano-midi.de", 8.2))],
    {"model": "VRNN (Chung et al. 2015)", "family": "vrnn", "dataset": None, "value": None,
     "paper": "A Recurrent Latent Variable Model for Sequential Data, NIPS 2015",
     "source": _VRNN_ABSTRACT,
     "note": "not found: the paper evaluates four speech data sets and one of handwriting (its abstract), no "
             "polyphonic music; no VRNN polyphonic figure was found elsewhere"},
    {"model": "STORN (Bayer & Osendorfer 2014)", "family": "storn", "dataset": None, "value": None,
     "paper": "Learning Stochastic Recurrent Networks, 2014", "source": None,
     "note": "not found: no stored copy of its polyphonic results was found"},
    {"model": "VRAE (Fabius & van Amersfoort 2014)", "family": "vrae", "dataset": None, "value": None,
     "paper": "Variational Recurrent Auto-Encoders, ICLR 2015 workshop", "source": _VRAE_ABSTRACT,
     "note": "not found: the stored abstract describes MIDI experiments on the latent space, no test "
             "likelihood per step was found"},
]


def published_for(dataset: str, family: Optional[str] = None, model_prefix: Optional[str] = None) -> Optional[dict]:
    """The published entry for ``dataset`` beside our ``family`` (or whose model starts ``model_prefix``)."""
    for p in PUBLISHED:
        if p["dataset"] != dataset or p["value"] is None:
            continue
        if (family is not None and p["family"] == family) or (model_prefix and p["model"].startswith(model_prefix)):
            return p
    return None


def find_datasets(directory: Path) -> List[tuple]:
    """(name, path) of the benchmark pickles present in ``directory``, in ``DATASETS`` order."""
    return [(name, directory / fname) for name, fname in DATASETS if (directory / fname).is_file()]


def write_quick_subset(src: Path, dst: Path) -> Path:
    """A few short sequences of each split of ``src`` (read by the restricted unpickler), written to
    ``dst`` in the same layout: the quick mode's data."""
    from dvae.data import safe_load

    data = safe_load(str(src))
    if not isinstance(data, dict) or not all(s in data for s in QUICK_SEQUENCES):
        raise DataError(f"{src}: expected a dict with keys train, valid, test")
    small = {s: [[tuple(int(n) for n in step) for step in seq[:QUICK_STEPS]] for seq in list(data[s])[:n]]
             for s, n in QUICK_SEQUENCES.items()}
    atomic_write(dst, lambda f: pickle.dump(small, f, protocol=2))
    return dst


def train_and_eval(data: Path, family: str, budget: float, iw_samples: int, seed: int, device: str,
                   quick: bool = False) -> dict:
    """One training run with ``dvae train --data DATA --model FAMILY --seed SEED``'s configs (the train
    verb's settings, ``dvae.fitting.train_options`` and ``new_run_config``: the project's defaults, nothing
    else changed)
    for ``budget`` seconds of training CPU time (:class:`studies.compare.budget.CpuBudget`; no epoch cap
    but early stopping, as under ``--time-limit``), then ``dvae eval``'s scoring of the test split with
    the best-on-validation parameters (``dvae.infer.evaluation.evaluate``, seeded as ``dvae eval --seed``
    seeds it); in-process, writing no run directory."""
    import dataclasses

    import pyro

    from dvae.device import resolve_device
    from dvae.fitting import new_run_config, prepare, train_options
    from dvae.infer.evaluation import evaluate
    from dvae.infer.trainer import Trainer
    from dvae.models import build_model
    from dvae.run import DataConfig, RunConfig, load_data

    argv = ["train", "--data", str(data), "--model", family, "--seed", str(seed), "--device", device]  # the record
    a = train_options(model=family, data=str(data), seed=seed, device=device)  # dvae train's settings, as dvae.fit takes them
    loaded = load_data(RunConfig(data=DataConfig(source=a.data, episodes=a.episodes, steps=a.steps, data_seed=a.seed,
                                                 missing=a.missing, tokens=a.tokens, min_count=a.min_count)))
    config = new_run_config(a, loaded)
    train = dataclasses.replace(config.train, epochs=1 if quick else None, time_limit=None)
    dev = resolve_device(train.device)
    norm = config.normalizer
    pyro.set_rng_seed(train.seed)
    model = build_model(config.model).to(dev)
    trainer = Trainer(model, train, prepare(loaded, norm, "train"), prepare(loaded, norm, "valid"),
                      norm.log_det_per_step, dev, x_log_std=norm.log_std)
    run = train_best(trainer, budget)  # the best-on-validation parameters, in eval mode
    xs, us = loaded.subset("test")
    t0 = time.perf_counter()
    pyro.set_rng_seed(seed)
    ev = evaluate(model, norm.x(xs), norm.u(us), norm.log_det_per_step, train.eval_batch_size, iw_samples=iw_samples,
                  device=dev, x_log_std=norm.log_std, vectorized=True)
    eval_wall = time.perf_counter() - t0
    return {"family": family, "budget_s": budget, "budget_kind": "cpu", "epochs": round(run.epochs, 2),
            "best_epoch": trainer.state["best_epoch"], "updates": run.updates, "stop_reason": run.stop_reason,
            "train_cpu_s": run.clock.used, "train_update_s": trainer.state["train_seconds"],
            "train_wall_s": run.wall_seconds, "eval_s": eval_wall,
            "best_valid_neg_elbo_per_step": trainer.state["best_valid"],
            "skipped_updates": trainer.state["skipped_updates"],
            "test_sequences": ev["num_sequences"], "test_steps": ev["num_steps"],
            "neg_elbo_per_step": ev["neg_elbo_per_step"], "recon_per_step": ev["recon_per_step"],
            "kl_per_step": ev["kl_per_step"], "nll_iw_per_step": ev["nll_iw_per_step"], "iw_samples": iw_samples,
            "command": f"dvae train {' '.join(argv[1:])}'s configs for {budget:g} training CPU s"
                       + (", one epoch" if quick else "")
                       + f", then dvae eval RUN --split test --iw-samples {iw_samples} --seed {seed}'s scoring"}


def run(ctx: Context) -> Section:
    if ctx.polyphonic_dir is None:
        return Section(KEY, TITLE, "", {}, skipped="no --polyphonic-dir given")
    directory = Path(ctx.polyphonic_dir)
    found = find_datasets(directory)
    if not found:
        raise DataError(f"{directory}: none of {', '.join(f for _, f in DATASETS)} is there")
    budget = QUICK_BUDGET_S if ctx.quick else FULL_BUDGET_S
    iw = QUICK_IW_SAMPLES if ctx.quick else FULL_IW_SAMPLES
    work = Path(ctx.work_dir) / KEY
    fams = families()
    runs = {(r["dataset"], r["family"]): r for r in _carried(ctx, budget, iw)}
    # the data sets of this run's directory, and those of stored runs whose file is not in it (kept)
    names = [n for n, _ in DATASETS if n in dict(found) or any(d == n for d, _ in runs)]

    def section(draw: bool) -> Section:
        ordered = [runs[(n, f)] for n in names for f in fams if (n, f) in runs]
        results = {"runs": ordered, "families": fams,
                   "not_run": [[n, f] for n in names for f in fams if (n, f) not in runs], "published": PUBLISHED,
                   "budget_s": budget, "iw_samples": iw, "datasets": names,
                   "missing": [n for n, _ in DATASETS if n not in names], "quick": ctx.quick}
        fig_path, fig_link = ctx.figure(KEY)
        if draw:
            plot(results, fig_path)
        return Section(KEY, TITLE, render(results, fig_link), results)

    for name, path in found:
        if ctx.polyphonic_datasets is not None and name not in ctx.polyphonic_datasets:
            continue  # its stored runs are kept
        data = write_quick_subset(path, work / "data" / path.name) if ctx.quick else path
        for family in to_run(ctx, fams):
            r = train_and_eval(data, family, budget, iw, ctx.seed, ctx.device, ctx.quick)
            r["dataset"] = name
            runs[(name, family)] = r
            ctx.partial(section(draw=False))  # the runs so far (the figure comes at the end)
    return section(draw=True)


def restate(results: dict, ctx: Context) -> str:
    """The section's markdown from its stored results, every family without a run listed as not run yet."""
    results = dict(results)
    meta = (ctx.previous or {}).get("meta", {})
    results["runs"] = [r if "run" in r or r.get("budget_kind") == "cpu" else {"run": stored_run(meta), **r}
                       for r in results["runs"]]  # a wall-clock row: when and at what load
    fams = results["families"] = families()
    have = {(r["dataset"], r["family"]) for r in results["runs"]}
    results["not_run"] = [[n, f] for n in results["datasets"] for f in fams if (n, f) not in have]
    return render(results, ctx.figure(KEY)[1])


def _carried(ctx: Context, budget: float, iw: int) -> List[dict]:
    """The stored runs this run keeps: of a stored run in the same mode with the same budget and K, each
    with ``run``: the date, commit and command it came from."""
    prev = ctx.previous
    if not prev or prev.get("skipped"):
        return []
    res, meta = prev.get("results", {}), prev.get("meta", {})
    if bool(res.get("quick")) != bool(ctx.quick) or res.get("budget_s") != budget or res.get("iw_samples") != iw:
        return []
    return [{"run": stored_run(meta), **r} if "run" not in r else dict(r) for r in res.get("runs", [])]


def plot(results: dict, path: Path) -> None:
    """Per data set: our test -ELBO (bars) and IW bound (dots) per family, the published DMM figure
    (star, at the DMM) and the published SRNN figure (dashed line)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = results["datasets"]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = {r["family"]: r for r in results["runs"] if r["dataset"] == name}
        fams = results.get("families", list(rows))
        xs = list(range(len(fams)))
        nan = float("nan")  # a family not run yet: no bar
        ax.bar(xs, [rows[f]["neg_elbo_per_step"] if f in rows else nan for f in fams], color="#9ecae1",
               label="ours: test -ELBO")
        ax.plot(xs, [rows[f]["nll_iw_per_step"] if f in rows else nan for f in fams], "ko",
                label=f"ours: IW bound (K={results['iw_samples']})")
        dmm = published_for(name, family="dmm")
        if dmm is not None and "dmm" in fams:
            ax.plot([fams.index("dmm")], [dmm["value"]], "r*", ms=12, label="published DMM (Krishnan 2017)")
        srnn = published_for(name, model_prefix="SRNN")
        if srnn is not None:
            ax.axhline(srnn["value"], color="grey", ls="--", lw=1, label="published SRNN (Fraccaro 2016)")
        ax.set_xticks(xs)
        ax.set_xticklabels(fams, rotation=45, fontsize=7)
        ax.set_title(f"{name} ({results['budget_s']:g} s per run)")
        ax.set_ylabel("nats per time step (lower is better)")
        ax.set_ylim(0, None)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def _fmt(v, spec="{:.2f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else spec.format(v)


def render(results: dict, fig_link: str) -> str:
    runs, budget, iw = results["runs"], results["budget_s"], results["iw_samples"]
    parts = []
    if results["quick"]:
        parts += [f"**Quick mode (a smoke test): {QUICK_SEQUENCES['train']} training sequences of at most "
                  f"{QUICK_STEPS} steps per file, one epoch; the numbers below mean nothing.**", ""]
    kinds = {r.get("budget_kind", "wall") for r in runs}
    parts += [
        f"A run of this section trains with the configs of `dvae train --data PICKLE --model FAMILY` (the project's default "
        f"hyperparameters, nothing else changed; no epoch cap, early stopping on) for {budget:g} seconds of "
        "training CPU time of its process with one torch thread (validation after each epoch paused the clock), "
        f"then is scored as `dvae eval RUN --split test --iw-samples {iw}` scores it, on the whole test split "
        "(every sequence, every step: no subsampling). The bounds are nats per time step on the 88-key binary "
        f"piano rolls: -ELBO (one sample per sequence) and the importance-weighted bound with K = {iw} (both upper "
        "bounds on the test negative log-likelihood). *updates* is the wall time spent in the training loop's "
        "updates.", ""]
    if "wall" in kinds:
        wall = [r for r in runs if r.get("budget_kind", "wall") == "wall"]
        loads = sorted({v for r in wall for v in (r.get("run") or {}).get("load_average", []) if v is not None})
        load = (f", 1-minute load average {loads[0]:.1f} to {loads[-1]:.1f} at the start and end of that run"
                if loads else "")
        upd = [r["train_update_s"] for r in wall if isinstance(r.get("train_update_s"), (int, float))]
        share = (f"; their updates took {min(upd):.0f} to {max(upd):.0f} s of the {budget:g} (the *updates* column), "
                 "the rest went to validation and the latent diagnostics, so these rows had less training than the "
                 "rows with a CPU budget of the same size") if upd else ""
        parts += [
            "Rows whose budget says \"wall s\" come from an earlier version of this section: `dvae train "
            f"--time-limit {budget:g}`, a wall-clock limit on the whole training loop (validation counted), on the "
            "same two-core machine with one torch thread (runs of "
            f"{', '.join(sorted({str((r.get('run') or {}).get('date')) for r in wall}))}{load}): with about a core to "
            f"itself, the process's wall seconds were close to its CPU seconds{share}. Their CPU time was not "
            "recorded (n/a). " + B.earlier_defaults_note({str((r.get("run") or {}).get("commit")) for r in wall}), ""]
    header = ["data set", "family", "budget", "train CPU (s)", "train wall (s)", "updates (s)", "epochs", "test seqs",
              "test steps", "test -ELBO/step", f"IW bound/step (K={iw})", "eval (s)", "published, same family", "from"]
    rows = []
    for r in runs:
        p = published_for(r["dataset"], family=r["family"])
        pub = f"{p['value']:.2f} ({p['model'].split(' (')[0]}, to convergence)" if p else "not found"
        kind = "CPU" if r.get("budget_kind", "wall") == "cpu" else "wall"
        rows.append([r["dataset"], r["family"], f"{r['budget_s']:g} {kind} s",
                     f"{r['train_cpu_s']:.0f}" if "train_cpu_s" in r else "n/a", f"{r['train_wall_s']:.0f}",
                     f"{r['train_update_s']:.0f}", r["epochs"], r["test_sequences"], r["test_steps"],
                     float(r["neg_elbo_per_step"]), float(r["nll_iw_per_step"]), f"{r['eval_s']:.0f}", pub,
                     "the run above" if "run" not in r else f"stored: {r['run'].get('date')}, {r['run'].get('commit')}"])
    for name, family in results.get("not_run", []):
        rows.append([name, family, "not run yet"] + [""] * (len(header) - 3))
    parts += [markdown_table(header, rows, fmt="{:.2f}"), ""]
    missing = sorted({f for _, f in results.get("not_run", [])}, key=lambda f: results.get("families", []).index(f))
    if missing:
        parts += [f"Not run yet (no stored result; no number is shown for them): {', '.join(missing)}. Run them with "
                  f"`{COMMAND} --sections {KEY} --polyphonic-dir DIR --families {','.join(missing)}"
                  f"{' --quick' if results['quick'] else ''}`.", ""]
    parts += [f"![test bounds per family beside the published figures]({fig_link})", ""]

    # what the runs show, read off the results
    for name in results["datasets"]:
        mine = [r for r in runs if r["dataset"] == name]
        if not mine:
            continue
        best = min(mine, key=lambda r: r["nll_iw_per_step"])
        line = (f"- {name}: the lowest test IW bound after {budget:g} s is the {best['family']}'s, "
                f"{best['nll_iw_per_step']:.2f} nats/step (epochs: {best['epochs']})")
        dmm_run = next((r for r in mine if r["family"] == "dmm"), None)
        dmm_pub = published_for(name, family="dmm")
        if dmm_pub is not None and dmm_run is not None:
            line += (f"; our DMM's {dmm_run['nll_iw_per_step']:.2f} is {dmm_run['nll_iw_per_step'] - dmm_pub['value']:.2f} "
                     f"nats/step above the published DMM figure ({dmm_pub['value']:.2f})")
        gaps = [r["neg_elbo_per_step"] - r["nll_iw_per_step"] for r in mine]
        line += (f"; the IW bound is {min(gaps):.3f} to {max(gaps):.3f} nats/step below the -ELBO.")
        order = beside({r["family"]: r["nll_iw_per_step"] for r in mine}, "the test IW bound, lowest first", False)
        if order and len({r.get("budget_kind", "wall") for r in mine}) > 1:
            order += " (Rows of both budget kinds: the wall-clock rows had less training, as said above.)"
        parts.append(line + (" " + order if order else ""))
    if results["missing"]:
        parts.append(f"- Not run (file not in --polyphonic-dir, no stored run): {', '.join(results['missing'])}.")
    parts += ["",
              "What this shows and what it does not: how far each family gets in the same few minutes of one CPU "
              "thread with the defaults `dvae train` ships, and how much tighter the IW bound is than the ELBO for "
              "each trained model. It does not rank the families at convergence: the published models were trained "
              "to convergence (with tuned sizes), ours for the budget above, so the gap to the published figures "
              "measures training time and tuning as much as the models, and the order of the families can change "
              "with more training. "
              "(The README's Piano-midi.de example is an older measurement of the same kind: the per-step program, "
              "batch size 8, 7 minutes, two cores.)", ""]

    parts += ["Published figures (test negative log-likelihood per time step, nats, as listed), each with where it "
              "was read; 'not found' where no stored source gave one. All come from models trained to convergence, "
              "not from a budget of minutes:", ""]
    prow, seen = [], []
    for p in PUBLISHED:
        if p["model"] in seen:
            continue
        seen.append(p["model"])
        same = [q for q in PUBLISHED if q["model"] == p["model"]]
        values = [_fmt(next((q["value"] for q in same if q["dataset"] == n), None)) for n, _ in DATASETS]
        prow.append([p["model"], *values, p["paper"], p["source"] or "-", p["note"]])
    parts += [markdown_table(["model", *[n for n, _ in DATASETS], "paper (table)", "read at", "note"], prow), ""]
    parts += ["The data's own provenance note (shared/data/polyphonic/PROVENANCE.md) warns that published rows must be "
              "checked against the papers before they are quoted: the figures above are as listed at the pages named "
              "(secondary listings), not checked against the papers' own tables, which were not in a stored source.",
              ""]
    return "\n".join(parts)
