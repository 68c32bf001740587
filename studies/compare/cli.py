"""The command line of the comparison study: ``python -m studies.compare [flags]`` from a source checkout.

Errors a user can fix are printed as one line on stderr with exit status 2 (add --debug for the
traceback); stdout carries only the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import studies.compare as study

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
PROG = "python -m studies.compare"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="The comparison study: exact against variational, guides, "
                                "estimators, model families; writes docs/comparisons.md. Run from the root of a "
                                "source checkout.")
    p.add_argument("--sections", default=None,
                   help="comma-separated sections to (re-)run (default: all); the others keep their stored results; "
                        f"none: only rebuild the document (sections: {', '.join(study.SECTIONS)})")
    p.add_argument("--families", default=None,
                   help="comma-separated model families to (re-)run in the sections that compare families (default: "
                        "all); the others keep their stored results")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds: a smoke test (default --out "
                                                         "runs/compare-quick/comparisons.md)")
    p.add_argument("--out", default=None, help="the document to write (default docs/comparisons.md); the raw "
                                               "results go beside it as .json, figures under its figures/")
    p.add_argument("--polyphonic-dir", default=None,
                   help="directory with Nottingham/MuseData/Piano-midi.de pickles (the polyphonic section skips without it)")
    p.add_argument("--polyphonic-datasets", default=None,
                   help="comma-separated: run only these of the polyphonic data sets (Nottingham, MuseData, "
                        "Piano-midi.de); the others keep their stored runs")
    p.add_argument("--work-dir", default=None, help="scratch space for runs (default runs/compare or runs/compare-quick)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p


def run(a, argv) -> dict:
    """Run the study as the parsed flags ``a`` ask; ``argv``: the flags as given (recorded in the results)."""
    from dvae.device import resolve_device

    out = Path(a.out or ("runs/compare-quick/comparisons.md" if a.quick else "docs/comparisons.md"))
    if out.suffix != ".md" or out.is_dir():  # the results go beside it, in a folder named after it
        raise ValueError(f"{out}: --out must name a markdown file (*.md), not a folder")
    sections = list(study.SECTIONS) if a.sections is None else [s.strip() for s in a.sections.split(",") if s.strip()]
    if a.polyphonic_dir is not None and not os.path.isdir(a.polyphonic_dir):
        raise ValueError(f"{a.polyphonic_dir}: --polyphonic-dir is not a directory")
    poly_sets = None
    if a.polyphonic_datasets is not None:
        from studies.compare.polyphonic import DATASETS

        poly_sets = [d.strip() for d in a.polyphonic_datasets.split(",") if d.strip()]
        unknown = [d for d in poly_sets if d not in dict(DATASETS)]
        if unknown or not poly_sets:
            raise ValueError(f"--polyphonic-datasets: unknown data set {', '.join(unknown) or '(none given)'}; choose "
                             f"from {', '.join(n for n, _ in DATASETS)}")
    families = None
    if a.families is not None:
        families = [f.strip() for f in a.families.split(",") if f.strip()]
        unknown = [f for f in families if f not in study.all_families()]
        if unknown or not families:
            raise ValueError(f"--families: unknown family {', '.join(unknown) or '(none given)'}; choose from "
                             f"{', '.join(study.all_families())}")
    ctx = study.Context(families=families, quick=a.quick, seed=a.seed, figures_dir=out.parent / "figures", doc_dir=out.parent,
                        work_dir=Path(a.work_dir or ("runs/compare-quick" if a.quick else "runs/compare")),
                        polyphonic_dir=None if a.polyphonic_dir is None else Path(a.polyphonic_dir),
                        polyphonic_datasets=poly_sets,
                        device=str(resolve_device(a.device)), threads=a.threads)
    return study.run_study(sections, ctx, out, study.command_line(argv))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(v) for v in argv]
    a = build_parser().parse_args(argv)
    try:
        from dvae.errors import DvaeError

        print(json.dumps(run(a, argv), allow_nan=True))
        return 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DvaeError, ValueError, RuntimeError, FloatingPointError, OSError) as e:
        if a.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
