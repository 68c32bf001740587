"""What the verbs of the ``dvae`` command share: their common flags, the help line's default, loading
the run a verb reads, and the exit statuses."""

from __future__ import annotations

import argparse

EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 141  # 141 = 128 + SIGPIPE, as a shell reports it
SPLITS = ["train", "valid", "test", "all"]


def add_common(p, device_and_seed: bool = False) -> None:
    """The flags every verb ends with; ``device_and_seed``: the verbs that read a run get --device and
    --seed before them."""
    if device_and_seed:
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="where the model runs (auto: cuda when there is one)")
        p.add_argument("--seed", type=int, default=0, help="seeds the draws (samples, particles, batches)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def add_run_and_split(p) -> None:
    """A trained run's directory and the data and split it is applied to."""
    p.add_argument("run_dir", help="a run directory written by dvae train")
    p.add_argument("--data", default=None, help="a SOURCE as dvae train takes (default: the run's own source)")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help="which sequences of the data (all: every sequence of the file)")


def state_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default: X)`` to the help line of every flag of ``parser`` and its verbs that has a
    default (not None, not a switch's False) and does not state it already."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                state_defaults(sub)
        elif action.option_strings and action.help not in (None, argparse.SUPPRESS) and has_default(action) \
                and "default" not in action.help:
            action.help += " (default: %(default)s)"


def has_default(action) -> bool:
    """Whether a flag has a default its help should state: not None, not a switch's False (0 is one)."""
    return action.default is not None and action.default is not False and action.default != argparse.SUPPRESS


def method_defaults(name: str) -> dict:
    """The defaults of the keyword arguments of ``Run.<name>``: the flags of the verb over it take them
    (one place states each default)."""
    import inspect

    from dvae.trained import Run

    return {k: v.default for k, v in inspect.signature(getattr(Run, name)).parameters.items()
            if v.default is not inspect.Parameter.empty}


def load_run(a):
    """The run of ``a.run_dir`` on ``a.device`` (``dvae.load``)."""
    from dvae.api import load

    return load(a.run_dir, a.device)
