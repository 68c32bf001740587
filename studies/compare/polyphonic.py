"""The polyphonic music benchmarks: each model family trained by ``dvae train`` under a fixed wall-time
budget on Nottingham, MuseData and Piano-midi.de, scored on the test split, beside published figures.

Each run is exactly ``dvae train --data PICKLE --model FAMILY --time-limit BUDGET`` (the project's
default hyperparameters, nothing else changed) followed by ``dvae eval RUN --split test --iw-samples K``,
called in-process through the CLI's own parser so the defaults are the command's. The data is not part
of the library: the section reads the pickles from ``ctx.polyphonic_dir`` (``--polyphonic-dir``) and is
skipped without it; it uses whichever of the three file names exist there.

The published figures (``PUBLISHED``) are citations, not results of this code: each names where it was
read. They come from models trained to convergence; ours from minutes
of one CPU thread, which the tables say in their budget column.

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
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional

from studies.compare import COMMAND, Context, Section, all_families, markdown_table, to_run
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
"""Seconds of ``--time-limit`` per run in full mode: 9 runs of this plus validation, plots and the
test evaluation fit in about 45 minutes of one torch thread."""
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
    *[{"model": "SRNN (Fraccaro et al. 2016)", "family": None, "dataset": d, "value": v,
       "paper": "Sequential Neural Models with Stochastic Layers, NIPS 2016, table of polyphonic test results",
       "source": _WIZWAND_SRNN,
       "note": "a listing of the paper's benchmark results; SRNN is not one of our families"}
      for d, v in (("Nottingham", 2.94), ("MuseData", 6.28), ("Piano-midi.de", 8.2))],
    {"model": "VRNN (Chung et al. 2015)", "family": "vrnn", "dataset": None, "value": None,
     "paper": "A Recurrent Latent Variable Model for Sequential Data, NIPS 2015",
     "source": _VRNN_ABSTRACT,
     "note": "not found: the paper evaluates four speech data sets and one of handwriting (its abstract), no "
             "polyphonic music; no VRNN polyphonic figure was found elsewhere"},
    {"model": "STORN (Bayer & Osendorfer 2014)", "family": None, "dataset": None, "value": None,
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


def train_and_eval(data: Path, family: str, run_dir: Path, budget: float, iw_samples: int, seed: int,
                   device: str, quick: bool = False) -> dict:
    """One ``dvae train`` (defaults but family, time limit and seed) and one ``dvae eval`` of its test
    split, in-process through the Python API (``dvae.fit``, ``Run.evaluate``); their figures and wall times."""
    import dvae

    if run_dir.exists():  # a scratch run of an earlier study: start afresh
        shutil.rmtree(run_dir)
    argv = ["train", "--data", str(data), "--model", family, "--time-limit", f"{budget:g}", "--seed", str(seed),
            "--device", device, "--out", str(run_dir)]
    options = dict(model=family, time_limit=budget, seed=seed, device=device, out=run_dir)
    if quick:
        argv += ["--epochs", "1"]
        options["epochs"] = 1
    t0 = time.perf_counter()
    run = dvae.fit(str(data), **options)
    summary = run.summary
    train_wall = time.perf_counter() - t0
    eval_argv = ["eval", str(run_dir), "--split", "test", "--iw-samples", str(iw_samples), "--seed", str(seed),
                 "--device", device]
    t0 = time.perf_counter()
    ev = run.evaluate(split="test", iw_samples=iw_samples, seed=seed)
    eval_wall = time.perf_counter() - t0
    return {"family": family, "budget_s": budget, "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
            "train_update_s": summary["train_seconds"], "train_wall_s": train_wall, "eval_s": eval_wall,
            "best_valid_neg_elbo_per_step": summary["best_valid_neg_elbo_per_step"],
            "skipped_updates": summary["skipped_updates"],
            "test_sequences": ev["num_sequences"], "test_steps": ev["num_steps"],
            "neg_elbo_per_step": ev["neg_elbo_per_step"], "recon_per_step": ev["recon_per_step"],
            "kl_per_step": ev["kl_per_step"], "nll_iw_per_step": ev["nll_iw_per_step"], "iw_samples": iw_samples,
            "command": "dvae " + " ".join(argv[:-2]) + " --out RUN && dvae eval RUN " + " ".join(eval_argv[2:])}


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
    for name, path in found:
        data = write_quick_subset(path, work / "data" / path.name) if ctx.quick else path
        for family in to_run(ctx, fams):
            r = train_and_eval(data, family, work / f"{name}-{family}", budget, iw, ctx.seed, ctx.device, ctx.quick)
            r["dataset"] = name
            runs[(name, family)] = r
    names = [n for n, _ in found]
    ordered = [runs[(n, f)] for n in names for f in fams if (n, f) in runs]
    results = {"runs": ordered, "families": fams,
               "not_run": [[n, f] for n in names for f in fams if (n, f) not in runs], "published": PUBLISHED, "budget_s": budget, "iw_samples": iw,
               "datasets": [n for n, _ in found], "missing": [n for n, _ in DATASETS if n not in dict(found)],
               "quick": ctx.quick}
    fig_path, fig_link = ctx.figure(KEY)
    plot(results, fig_path)
    return Section(KEY, TITLE, render(results, fig_link), results)


def restate(results: dict, ctx: Context) -> str:
    """The section's markdown from its stored results, every family without a run listed as not run yet."""
    results = dict(results)
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
    run = {k: meta.get(k) for k in ("date", "commit", "command")}
    return [{"run": run, **r} if "run" not in r else dict(r) for r in res.get("runs", [])]


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
    parts += [
        f"Each run is `dvae train --data PICKLE --model FAMILY --time-limit {budget:g}` with the project's default "
        f"hyperparameters (nothing else changed), then `dvae eval RUN --split test --iw-samples {iw}` on the whole "
        "test split (every sequence, every step: no subsampling). The time limit is wall time of the training loop; "
        "validation after each epoch counts against it, so *updates* is the part spent in SVI updates. The "
        "bounds are nats per time step on the 88-key binary piano rolls: -ELBO (one sample per sequence) and "
        f"the importance-weighted bound with K = {iw} (both upper bounds on the test negative log-likelihood).",
        ""]
    header = ["data set", "family", "budget (s)", "train wall (s)", "updates (s)", "epochs", "test seqs", "test steps",
              "test -ELBO/step", f"IW bound/step (K={iw})", "eval (s)", "published, same family", "from"]
    rows = []
    for r in runs:
        p = published_for(r["dataset"], family=r["family"])
        pub = f"{p['value']:.2f} ({p['model'].split(' (')[0]}, to convergence)" if p else "not found"
        rows.append([r["dataset"], r["family"], f"{r['budget_s']:g}", f"{r['train_wall_s']:.0f}",
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
        parts.append(line)
    if results["missing"]:
        parts.append(f"- Not run (file not in --polyphonic-dir): {', '.join(results['missing'])}.")
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
