"""Argument types shared by the command line's flags: numbers that must be finite."""

from __future__ import annotations

import argparse
import math


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
