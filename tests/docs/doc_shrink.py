"""How tests/docs/test_doc_commands.py shrinks the docs' shell commands so that they run in seconds.

The test puts a ``dvae`` and a ``python`` of its own first on PATH; each rewrites its argument list
with the functions below, appends the original and the rewritten list to ``$DOC_COMMANDS_LOG`` (one
JSON line per command, so the test knows what ran) and then runs the real thing. The rules only lower
sizes (epochs, episodes, samples, time limits, planner sizes), never change what a command does;
every rule is listed here:

- ``dvae train``: at most 2 epochs (``--epochs 2`` added when absent), ``--time-limit`` at most 20 s,
  ``--no-progress``; on the built-in pendulum source at most 12 episodes;
- ``dvae collect``: at most 12 episodes;
- ``dvae eval``/``score``: ``--iw-samples`` at most 4, ``--particles`` at most 16;
- ``dvae plan``: 1 episode, ``--horizon`` at most 5, ``--num-samples`` at most 16, ``--iterations``
  1, ``--max-steps`` at most 5;
- ``dvae generate``/``impute``: ``--num-samples`` at most 4 (imputation: 8);
- ``python examples/X.py``: the script's own smoke mode (``--quick``; ``--smoke`` where that is its
  name); ``python bench/X.py``: ``--quick`` (not for ``--markdown-from``/``--grid-from``, which only
  read results), a ``--budget`` of at most 2 s, and ``--out`` into the working directory when the
  command names none (a benchmark never writes into the checkout's bench/results).
"""

from __future__ import annotations

import json
import os
from typing import List, Optional

EXAMPLE_SMOKE_FLAG = {"tokens_and_missing.py": "--smoke", "training_diagnostics.py": "--smoke"}


def _value(argv: List[str], flag: str) -> Optional[str]:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _cap(argv: List[str], flag: str, cap, add: bool = False) -> List[str]:
    """``flag``'s value lowered to at most ``cap`` (added with ``cap`` when absent and ``add``)."""
    out, found = [], False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == flag and i + 1 < len(argv):
            out += [a, str(min(type(cap)(float(argv[i + 1])), cap))]
            found, i = True, i + 2
            continue
        if a.startswith(flag + "="):
            out.append(f"{flag}={min(type(cap)(float(a.split('=', 1)[1])), cap)}")
            found = True
        else:
            out.append(a)
        i += 1
    if add and not found:
        out += [flag, str(cap)]
    return out


def shrink_dvae(argv: List[str]) -> List[str]:
    """The arguments of a ``dvae VERB ...`` command (without ``dvae``), shrunk."""
    argv = list(argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb == "train":
        argv = _cap(argv, "--epochs", 2, add=True)
        argv = _cap(argv, "--time-limit", 20.0)
        if "--no-progress" not in argv:
            argv.append("--no-progress")
        if _value(argv, "--resume") is None and _value(argv, "--data") in (None, "pendulum"):
            argv = _cap(argv, "--episodes", 12, add=True)
    elif verb == "collect":
        argv = _cap(argv, "--episodes", 12)
    elif verb in ("eval", "score"):
        argv = _cap(argv, "--iw-samples", 4)
        argv = _cap(argv, "--particles", 16)
    elif verb == "plan":
        for flag, cap in (("--episodes", 1), ("--horizon", 5), ("--num-samples", 16), ("--iterations", 1)):
            argv = _cap(argv, flag, cap)
        argv = _cap(argv, "--max-steps", 5, add=True)
    elif verb == "generate":
        argv = _cap(argv, "--num-samples", 4)
    elif verb == "impute":
        argv = _cap(argv, "--num-samples", 8)
    return argv


def shrink_python(argv: List[str], root: str, cwd: str) -> List[str]:
    """The arguments of a ``python ...`` command (without ``python``): examples and benchmarks in their
    smoke modes; anything else (``-c``, ``-m``) unchanged."""
    if not argv or argv[0].startswith("-"):
        return list(argv)
    script, rest = argv[0], list(argv[1:])
    parts = os.path.normpath(os.path.join(cwd, script)).split(os.sep)  # "../bench_quality.py" from bench/results
    if len(parts) >= 2 and parts[-2] == "examples":
        flag = EXAMPLE_SMOKE_FLAG.get(parts[-1], "--quick")
        return [os.path.join(root, "examples", parts[-1])] + rest + ([flag] if flag not in rest else [])
    if len(parts) >= 2 and parts[-2] == "bench":
        if "--quick" not in rest and "--markdown-from" not in rest and "--grid-from" not in rest:
            rest.append("--quick")
        rest = _cap(rest, "--budget", 2.0)
        if not any(a == "--out" or a.startswith("--out=") for a in rest):  # never the checkout's bench/results
            rest += ["--out", os.path.join(cwd, "bench-results", parts[-1].replace(".py", ".json"))]
        return [os.path.join(root, "bench", parts[-1])] + rest
    return [script] + rest


def log(kind: str, original: List[str], shrunk: List[str]) -> None:
    path = os.environ.get("DOC_COMMANDS_LOG")
    if path:
        with open(path, "a") as f:  # a test's own log in its temporary directory
            f.write(json.dumps({"kind": kind, "argv": original, "shrunk": shrunk}) + "\n")
