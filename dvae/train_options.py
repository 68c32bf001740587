"""The ``dvae train`` settings as keyword arguments: their names, defaults and choices, and their check.

:func:`train_options` builds the settings :func:`dvae.fitting.train` takes from keyword arguments (what
``dvae.fit`` passes on): the train verb's flags by their names with underscores (:data:`TRAIN_OPTIONS`,
with the command line's defaults), each checked for its choices (:func:`choices`) and type.
"""

from __future__ import annotations

import difflib
from types import SimpleNamespace
from typing import Optional

import numpy as np

TRAIN_OPTIONS = {
    # data
    "missing": "none", "tokens": "words", "min_count": 1, "episodes": 128, "steps": 64,
    # training
    "epochs": None, "time_limit": None, "batch_size": 16, "lr": None, "optimizer": "adam", "lr_decay": 1.0,
    "clip_norm": 10.0, "kl_start": 0.1, "anneal_epochs": 5.0, "free_bits": 0.0, "beta": 1.0,
    "collapse_kl": 0.01, "collapse_epochs": 3, "patience": 10, "per_step": False, "no_bucket": False,
    "device": "auto", "seed": 0, "lr_schedule": "plateau", "lr_factor": 0.5, "lr_patience": 3, "min_lr": 1e-4,
    "plateau_updates": 500,
    "objective": "elbo", "train_samples": 1,
    # model
    "z_dim": 16, "rnn_dim": 64, "rnn_type": "gru", "transition_dim": 64, "emission_dim": 64, "guide": "dks",
    "num_iafs": None, "iaf_dim": 50, "bidirectional": False, "condition": False, "kl_balance": 0.0,
    "emission_scale": "constant", "vrae_decoder": "controls", "rvae_noncausal": False,
    # output
    "no_progress": False, "no_plots": False, "dist_timeout": None,
}
"""The ``dvae train`` flags (besides --model, --data, --out, --resume, --debug) by their names with
underscores, with the command line's defaults (tests/api checks them against its parser)."""

CHOICES = {"missing": ("none", "nan"), "tokens": ("words", "chars"), "rnn_type": ("gru", "lstm", "rnn"),
           "optimizer": ("adam", "clipped_adam"), "device": ("auto", "cpu", "cuda"),
           "emission_scale": ("constant", "state"), "vrae_decoder": ("controls", "feedback"),
           "lr_schedule": ("plateau", "none"), "objective": ("elbo", "iwae")}
"""The choices of the flags that have fixed ones; ``model`` and ``guide`` come from the families
(:func:`choices`)."""


def choices() -> dict:
    """Every flag with choices: :data:`CHOICES`, the model families and every guide a family takes."""
    from dvae.models import MODELS, all_guides

    return {**CHOICES, "model": tuple(MODELS), "guide": tuple(all_guides())}


_FLOAT_OPTIONS = {"time_limit", "lr", "lr_decay", "clip_norm", "kl_start", "anneal_epochs", "free_bits", "beta",
                  "collapse_kl", "dist_timeout"}


def train_options(model: str = "dmm", data: str = "pendulum", out: Optional[str] = None, **options) -> SimpleNamespace:
    """The train verb's settings from keyword arguments: ``options`` are its flags by their names with
    underscores (:data:`TRAIN_OPTIONS`). An unknown name, a value outside a flag's choices or of the
    wrong type raises ValueError naming it."""
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, list(TRAIN_OPTIONS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; the options are {', '.join(TRAIN_OPTIONS)}"
        raise ValueError(f"unknown option {name!r} (the `dvae train` flags with underscores){hint}")
    a = SimpleNamespace(**{**TRAIN_OPTIONS, **options}, model=model, data=data, out=out, resume=None, debug=False)
    allowed = choices()
    for name, value in vars(a).items():
        if name in allowed and value not in allowed[name]:
            raise ValueError(f"{name} = {value!r}: expected one of {', '.join(allowed[name])}")
        default = TRAIN_OPTIONS.get(name, "")
        if isinstance(default, bool) or name in ("per_step", "no_bucket", "bidirectional", "condition"):
            ok = isinstance(value, (bool, np.bool_))
            want = "a bool"
        elif name in _FLOAT_OPTIONS:
            ok = (value is None and default is None) or (isinstance(value, (int, float, np.integer, np.floating))
                                                         and not isinstance(value, bool))
            want = "a number" + (" or None" if default is None else "")
        elif isinstance(default, int) or name in ("epochs", "num_iafs"):
            ok = (value is None and default is None) or (isinstance(value, (int, np.integer))
                                                         and not isinstance(value, bool))
            want = "an int" + (" or None" if default is None else "")
        else:
            continue
        if not ok:
            raise ValueError(f"{name} = {value!r}: expected {want}, got {type(value).__name__}")
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            setattr(a, name, value.item())
    return a
