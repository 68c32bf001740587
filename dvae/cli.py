"""The ``dvae`` command: its verbs (collect, train, eval, score, plan, generate, impute, latent), each
printing one JSON object; the flags and JSON keys are the stable contract the README lists.

The verbs live in :mod:`dvae.commands` (their flags and a thin layer over the Python API); this module
builds the parser (:func:`build_parser`) and runs a verb (:func:`main`): it prints the result, words the
Python API's argument errors as flags (:func:`flag_words`), and handles signals and a closed pipe.
Errors a user can fix (bad input, flags, files; ``_user_error``) are printed as one line on stderr
with a non-zero exit status (add --debug for the traceback); anything else is a bug and shows its
traceback. stdout carries only the JSON result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from dvae.commands import (ADD, VERBS, cmd_collect, cmd_eval, cmd_generate, cmd_impute, cmd_latent, cmd_plan,
                           cmd_score, cmd_train)
from dvae.commands.common import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE, state_defaults

__all__ = ["main", "build_parser", "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_BROKEN_PIPE"]
MAX_ERROR_CHARS = 500
"""Error lines are cut to this many characters (a hostile file name or value cannot flood the terminal)."""


def _user_error(e: BaseException) -> bool:
    """Whether ``e`` is something a user can fix (bad input, flags or files, a diverged run, memory),
    reported in one line; anything else (a RuntimeError from torch, a TypeError, ...) is a bug, and its
    traceback is shown as it is."""
    from dvae.errors import DvaeError

    return isinstance(e, (DvaeError, ValueError, FloatingPointError, OSError, MemoryError)) or \
        type(e).__name__ == "OutOfMemoryError" or _allocator_error(e)


def _allocator_error(e: BaseException) -> bool:
    """torch's CPU allocator reports a failed allocation as a RuntimeError: memory, not a bug."""
    return isinstance(e, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(e)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (the verb, the problem, where to read more) and
    exit status 2, instead of argparse's usage block followed by the message."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``dvae`` parser: one sub-parser per verb (:mod:`dvae.commands`), every flag's help line with
    its default."""
    from dvae import __version__

    ap = OneLineParser(prog="dvae", description="Dynamical VAEs (DMM, VRNN, VRAE, ...) as Pyro programs.")
    ap.add_argument("--version", action="version", version=f"dvae {__version__}")
    sub = ap.add_subparsers(dest="verb", metavar="{" + ",".join(VERBS) + "}")
    sub.required = True
    for add in ADD.values():
        add(sub)
    state_defaults(ap)
    return ap


ARGUMENT_FLAGS = {"num_steps": "steps"}
"""Arguments of the Python API whose flag has another name (Run.generate's num_steps is --steps)."""


def flag_words(msg: str, a) -> str:
    """An error message of the Python API as the command line words it: its leading argument names
    (``iw_samples: ...``, ``context, horizon: ...``) become the verb's flags (``--iw-samples: ...``)."""
    names, sep, rest = msg.partition(": ")
    if not sep:
        return msg
    flags = []
    for name in names.split(", "):
        dest = ARGUMENT_FLAGS.get(name, name)
        if not name.isidentifier() or dest not in vars(a) or dest in ("verb", "run_dir"):
            return msg
        flags.append("--" + dest.replace("_", "-"))
    return ", ".join(flags) + sep + rest


def _non_finite_at(obj, where="result"):
    """The place of the first NaN or infinity in a JSON-able result (numpy arrays included), or None."""
    if isinstance(obj, (np.ndarray, np.generic)):
        obj = obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return where
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _non_finite_at(v, f"{where}.{k}" if where != "result" else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _non_finite_at(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _listed(value):
    """numpy arrays and scalars in a result (the Python API's) as JSON lists and numbers."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _strict_json(result) -> str:
    """The result as standard JSON: a NaN or infinity (which JSON has no number for) is an error naming
    its key, never printed as the non-standard NaN/Infinity with exit status 0."""
    try:
        return json.dumps(result, allow_nan=False, default=_listed)
    except ValueError:
        where = _non_finite_at(result) or "the result"
        raise FloatingPointError(f"{where} is not a finite number: the data or the model overflowed "
                                 "(no JSON printed)") from None


def main(argv=None) -> int:
    try:
        a = build_parser().parse_args(argv)  # imports torch: seconds in which a Ctrl-C may come
    except KeyboardInterrupt:
        print("dvae: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        verbs = {"collect": cmd_collect, "train": lambda a: cmd_train(a, sys.argv[1:] if argv is None else argv),
                 "eval": cmd_eval, "score": cmd_score, "plan": cmd_plan, "generate": cmd_generate,
                 "impute": cmd_impute, "latent": cmd_latent}
        if not 0 <= getattr(a, "seed", 0) < 2 ** 32:  # numpy's and Gymnasium's range, checked before any work
            raise ValueError(f"--seed = {a.seed}: expected in 0..4294967295 (2**32 - 1)")
        result = verbs[a.verb](a)
        if result is not None:  # None: a data-parallel rank other than 0 (rank 0 prints)
            print(result if isinstance(result, str) else _strict_json(result))
            sys.stdout.flush()
        return 0
    except BrokenPipeError:  # the reader of stdout (e.g. `| head`) has gone: end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush goes nowhere
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("dvae: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if a.debug or not _user_error(e):
            raise
        msg = flag_words(str(e).splitlines()[0], a) if str(e).strip() else type(e).__name__
        if "DefaultCPUAllocator" in msg:  # "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: ..."
            msg = msg[msg.index("DefaultCPUAllocator"):]
        if isinstance(e, MemoryError) or _allocator_error(e) or type(e).__name__ == "OutOfMemoryError":
            msg = f"out of memory ({msg}): the data or the sizes asked for need more memory than there is"
        if len(msg) > MAX_ERROR_CHARS:
            msg = msg[:MAX_ERROR_CHARS - 3] + "..."
        who = f"dvae {a.verb}"
        if a.verb == "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1 and "rank" not in msg[:5]:  # under torchrun
            who += f" (rank {os.environ.get('RANK', '?')} of {os.environ['WORLD_SIZE']})"
        print(f"{who}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
