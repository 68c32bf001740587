"""The comparison study behind docs/comparisons.md (``python -m studies.compare``, from a source checkout).

One command runs the study and writes the document, its figures and the raw results; no number in
the document is typed by hand::

    python -m studies.compare                                   # every section that needs no external data
    python -m studies.compare --polyphonic-dir ../shared/data/polyphonic   # and the polyphonic benchmarks
    python -m studies.compare --sections exact,estimators       # re-run some sections; the others are kept
    python -m studies.compare --quick                           # tiny sizes, seconds: a smoke test

The study is not part of the installed ``dvae`` package: it uses ``dvae`` through its public API (and
``envs``), shells out to git for the commit it records, and writes under docs/.

Each section is a module of this package with ``run(ctx: Context) -> Section``; ``SECTIONS`` lists
them in document order. A section's ``Section`` carries its markdown (tables built from its own
results), its JSON-able results and its wall time. The results directory beside the document
(``docs/comparisons/<key>.json`` for ``docs/comparisons.md``) keeps every section's last run with
the command, machine, date and commit it came from, so re-running one section rebuilds the document
with the others' stored figures, and the document says for each section when and how it was
produced. ``python -m studies.compare --sections none`` only rebuilds the document from the stored results.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

COMMAND = "python -m studies.compare"
SECTIONS: Dict[str, str] = {
    "exact": "studies.compare.exact",            # exact log-likelihood against the ELBO and IW bounds (LGSSM data)
    "guides": "studies.compare.guides",          # guides on the same model: bound reached and time
    "estimators": "studies.compare.estimators",  # gradient estimators: value, gradient variance, time
    "nonlinear": "studies.compare.nonlinear",    # particle filter beside the bounds on a nonlinear system
    "polyphonic": "studies.compare.polyphonic",  # the polyphonic music benchmarks beside published figures
    "worldmodels": "studies.compare.worldmodels",  # every family as a world model of Pendulum-v1
}


@dataclass
class Context:
    """What a section gets: sizes (``quick``), a seed, where to put figures and scratch runs, and the
    optional polyphonic data directory (sections that need it skip without it)."""

    quick: bool = False
    seed: int = 0
    figures_dir: Path = Path("docs/figures")
    """Where figures go; the document links them relative to ``doc_dir``."""
    doc_dir: Path = Path("docs")
    work_dir: Path = Path("runs/compare")
    """Scratch space for run directories and data files."""
    polyphonic_dir: Optional[Path] = None
    polyphonic_datasets: Optional[List[str]] = None
    """The polyphonic data sets to (re-)run (None: every one in ``polyphonic_dir``); the others keep their
    stored runs."""
    device: str = "cpu"
    threads: int = 0
    """torch threads (0: torch's default)."""
    families: Optional[List[str]] = None
    """The model families to (re-)run in sections that compare families (None: every family of
    ``dvae.models.MODELS`` the section covers); the others keep their stored results."""
    previous: Optional[dict] = None
    """The stored results of the section being run (its JSON as ``run_study`` read it), or None."""
    on_partial: Optional[Callable[["Section"], None]] = None
    """Set by ``run_study``: stores a section's results so far (``partial``)."""

    def partial(self, section: "Section") -> None:
        """Store ``section`` as it stands, in the middle of its run (after each family it trains), so
        that a long run stopped part-way keeps the families it finished; a later run carries them."""
        if self.on_partial is not None:
            self.on_partial(section)

    def figure(self, name: str) -> tuple:
        """(path to write a figure ``name``.png, the markdown link target relative to the document)."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        path = self.figures_dir / f"compare-{name}.png"
        return path, os.path.relpath(path, self.doc_dir)


@dataclass
class Section:
    key: str
    title: str
    markdown: str
    """The section's body: prose around tables and figure links generated from ``results``."""
    results: dict
    seconds: float = 0.0
    skipped: Optional[str] = None
    """Why the section did not run (e.g. no polyphonic data given); then ``markdown`` may be empty."""
    meta: dict = field(default_factory=dict)


def all_families() -> List[str]:
    """Every model family, in ``dvae.models.MODELS`` order."""
    from dvae.models import MODELS

    return list(MODELS)


def to_run(ctx: Context, families: List[str]) -> List[str]:
    """The ones of ``families`` (a section's) this run trains: all, or those ``ctx.families`` names."""
    return [f for f in families if ctx.families is None or f in ctx.families]


def carried_families(ctx: Context, signature: dict, legacy=None) -> Dict[str, dict]:
    """Per-family results of the section's stored run that this run keeps: those of a run on the same
    data (``signature``: what fixes the data and sizes; equal in both) and of the same mode (quick or
    not). Each comes with ``run``: the date, commit and command it came from. ``legacy(results)``: the
    per-family results of a run stored before families were recorded one by one (or None)."""
    prev = ctx.previous
    if not prev or prev.get("skipped") or bool(prev.get("meta", {}).get("quick")) != bool(ctx.quick):
        return {}
    res = prev.get("results", {})
    meta = prev.get("meta", {})
    if "signature" in res:
        if res["signature"] != signature:
            return {}
        models = res.get("models", {})
    else:
        models = legacy(res) if legacy is not None else None
        if not models:
            return {}
    return {f: {"run": stored_run(meta), **m} if "run" not in m else dict(m) for f, m in models.items()}


def stored_run(meta: dict) -> dict:
    """What a carried result records of the run it came from: date, commit, command and the 1-minute
    load averages at the start and end of its section (when stored)."""
    run = {k: meta.get(k) for k in ("date", "commit", "command")}
    loads = [meta.get("load_average_start"), meta.get("load_average_end")]
    if any(v is not None for v in loads):
        run["load_average"] = loads
    return run


def not_run_note(key: str, missing: List[str], extra: str = "") -> str:
    """The line that says which families have no stored result yet, with the command that runs them."""
    if not missing:
        return ""
    return (f"Not run yet (no stored result; no number is shown for them): {', '.join(f.upper() for f in missing)}. "
            f"Run them with `{COMMAND} --sections {key} --families {','.join(missing)}{extra}`.")


def markdown_table(header: List[str], rows: List[list], fmt: str = "{:.3f}") -> str:
    """A markdown table; floats are formatted with ``fmt``, everything else with str()."""
    def cell(v):
        if isinstance(v, float):
            return "n/a" if v != v else fmt.format(v)
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    import pyro
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{os.cpu_count()} CPU cores ({cpu}){gpu}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"pyro-ppl {pyro.__version__}, torch threads {torch.get_num_threads()}")


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not on every platform
        return None


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        # the study's own output (docs/: this page, its results and figures, rewritten as it runs) is no
        # uncommitted change of the code that ran
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)docs"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def render(stored: Dict[str, dict]) -> str:
    """The document from the stored sections (in SECTIONS order)."""
    parts = ["# Comparisons: exact against variational, guides, estimators, model families", "",
             "Generated by `python -m studies.compare` (`studies/compare/`, run from the root of a source checkout);",
             "every number below comes from that command, and `comparisons/<section>.json` beside this page holds the",
             "raw results. Each section says the command, machine, date, commit and wall time of the run that produced",
             "it; `python -m studies.compare --sections KEY` re-runs one, `--sections none` only rebuilds this page.", ""]
    total = sum(s["seconds"] for s in stored.values() if not s.get("skipped"))
    parts += [f"Total wall time of the sections below: {total / 60:.1f} min.", ""]
    for key in SECTIONS:
        s = stored.get(key)
        if s is None:
            parts += [f"## Section `{key}`", "", f"Not run yet (no stored results): `{COMMAND} --sections {key}`.", ""]
            continue
        parts += [f"## {s['title']}", ""]
        m = s["meta"]
        if s.get("skipped"):
            parts += [f"Not run: {s['skipped']} (`{m.get('command', COMMAND)}`).", ""]
            continue
        load = ""
        if m.get("load_average_start") is not None:
            load = (f"; 1-minute load average {m['load_average_start']:.1f} at the start and "
                    f"{m['load_average_end']:.1f} at the end (other jobs on the machine lengthen the wall time, and shorten the training of a wall-clock budget)")
        partial = (" Stopped part-way (the run was still going when these results were written): the families "
                   "it had not reached are listed as not run yet." if m.get("partial") else "")
        parts += [f"*Regenerate: `{m['command']}` ({s['seconds'] / 60:.1f} min on {m['machine']}; {m['date']}, "
                  f"commit {m['commit']}{load}).{partial}*", "", s["markdown"].strip(), ""]
    return "\n".join(parts)


def run_study(sections: List[str], ctx: Context, out_doc: Path, command: str) -> dict:
    """Run ``sections``, merge them into the stored results beside ``out_doc`` and rewrite it."""
    import torch

    from dvae.files import atomic_write

    sections = [s for s in sections if s != "none"]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    results_dir = out_doc.with_suffix("")
    stored: Dict[str, dict] = {}
    for key in SECTIONS:
        path = results_dir / f"{key}.json"
        if path.exists():
            try:
                stored[key] = json.loads(path.read_text())
                stored[key]["title"], stored[key]["seconds"]  # noqa: B018 (the keys a section needs)
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}: not a comparison section's results; move it away to start afresh") from None
    for key in list(stored):  # sections not re-run now: their markdown restated from their stored results
        module = importlib.import_module(SECTIONS[key])
        if key not in sections and not stored[key].get("skipped") and hasattr(module, "restate"):
            ctx.previous = stored[key]
            try:
                stored[key]["markdown"] = module.restate(stored[key]["results"], ctx)
            except (KeyError, TypeError, ValueError, IndexError):  # results of another layout: their own markdown
                pass
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "machine": machine(), "date": datetime.date.today().isoformat(), "commit": _commit(),
            "quick": ctx.quick}
    timings = {}
    for key in sections:
        module = importlib.import_module(SECTIONS[key])
        ctx.previous = stored.get(key)
        load_start = _load_average()
        t0 = time.perf_counter()

        def store(section: Section, done: bool = False) -> None:
            section.seconds = time.perf_counter() - t0
            section.meta = {**meta, "load_average_start": load_start, "load_average_end": _load_average(),
                            **section.meta}
            if not done:
                section.meta["partial"] = True  # the run was still going when this was written
            stored[key] = asdict(section)
            payload = json.dumps(stored[key], indent=1, allow_nan=True).encode()
            atomic_write(str(results_dir / f"{key}.json"), lambda f: f.write(payload))
            _write_doc(out_doc, stored)

        ctx.on_partial = store
        try:
            section: Section = module.run(ctx)
        finally:
            ctx.on_partial = None
        # write after every section (and every family of one, ``Context.partial``): a long study
        # interrupted keeps what it finished
        store(section, done=True)
        timings[key] = round(section.seconds, 1)
        print(f"{COMMAND}: {key} done in {section.seconds:.0f} s", file=sys.stderr)
    _write_doc(out_doc, stored)
    return {"doc": str(out_doc), "results": str(results_dir), "sections": timings,
            "skipped": {k: stored[k]["skipped"] for k in sections if stored[k].get("skipped")},
            "seconds": round(sum(timings.values()), 1)}


def _write_doc(out_doc: Path, stored: Dict[str, dict]) -> None:
    from dvae.files import atomic_write

    doc = render(stored).encode()
    atomic_write(str(out_doc), lambda f: f.write(doc))


def command_line(argv: List[str]) -> str:
    """The command that ran the study with flags ``argv``, as the results record it."""
    return COMMAND + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
