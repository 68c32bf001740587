"""Argument types shared by the command line's flags (numbers that must be finite), and train flags as
written turned into the options of ``dvae.fit`` (for scripts that record their settings as flags)."""

from __future__ import annotations

import argparse
import math
import shlex
from typing import Sequence, Union


def finite_float(text: str) -> float:
    """An argparse ``type`` for float flags: refuses nan and inf (``--time-limit nan`` would be written
    into config.json as the non-standard ``NaN`` and compare false against every limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text[:40]!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a finite number")
    return value


def options_from_flags(flags: Union[str, Sequence[str]]) -> dict:
    """``dvae train`` flags as written (``"--model vrae --lr 3e-3 --per-step"``, or that as a list of
    words) as the options of ``dvae.fit``: underscored names, a flag without a value True, numbers as
    numbers, ``--no-NAME`` False where NAME is an option and no_NAME is not (``--no-bidirectional``; but
    ``--no-bucket`` is the option no_bucket) (``dvae.fit`` checks names, types and choices; the last of a
    flag given twice wins)."""
    from dvae.train_options import TRAIN_OPTIONS

    words, options, i = (shlex.split(flags) if isinstance(flags, str) else list(flags)), {}, 0
    while i < len(words):
        if not words[i].startswith("--"):
            raise ValueError(f"flags {' '.join(words)!r}: {words[i]!r} is not a --flag")
        name, eq, value = words[i][2:].partition("=")
        if not eq:
            has_value = i + 1 < len(words) and not words[i + 1].startswith("--")
            value = words[i + 1] if has_value else True
            i += has_value
        if isinstance(value, str):
            for cast in (int, float):
                try:
                    value = cast(value)
                    break
                except ValueError:
                    pass
        key = name.replace("-", "_")
        if value is True and key not in TRAIN_OPTIONS and key.startswith("no_") and key[3:] in TRAIN_OPTIONS:
            key, value = key[3:], False  # --no-NAME of a switch that is on by default (--no-bidirectional)
        options[key] = value
        i += 1
    return options
