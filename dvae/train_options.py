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

from dvae.infer.train_config import TrainConfig
from dvae.models.config import ModelConfig
from dvae.run import DataConfig

_MODEL, _TRAIN, _DATA = ModelConfig(), TrainConfig(), DataConfig()

TRAIN_OPTIONS = {
    # data
    **{k: getattr(_DATA, k) for k in ("missing", "tokens", "min_count", "episodes", "steps")},
    # training
    **{k: getattr(_TRAIN, k) for k in ("epochs", "time_limit", "batch_size", "lr", "optimizer", "lr_decay",
                                       "clip_norm", "kl_start", "anneal_epochs", "free_bits", "beta",
                                       "collapse_kl", "collapse_epochs", "patience", "device", "seed",
                                       "lr_schedule", "lr_factor", "lr_patience", "min_lr", "plateau_updates",
                                       "objective", "train_samples")},
    "per_step": not _TRAIN.vectorized, "no_bucket": not _TRAIN.bucket,
    # model
    **{k: getattr(_MODEL, k) for k in ("z_dim", "rnn_dim", "rnn_type", "transition_dim", "emission_dim", "guide",
                                       "iaf_dim", "bidirectional", "kl_balance", "emission_scale", "vrae_decoder",
                                       "kvae_components", "kvae_state_dim", "v_dim")},
    "num_iafs": None, "condition": False, "rvae_noncausal": not _MODEL.rvae_causal,
    # output
    "no_progress": False, "no_plots": False, "dist_timeout": None,
}
"""The ``dvae train`` flags (besides --model, --data, --out, --resume, --debug) by their names with
underscores, with the command line's defaults: as its parser, the defaults of the config dataclasses
(``ModelConfig``, ``TrainConfig``, ``DataConfig``) where a flag sets a field (tests/api checks the
two against each other)."""

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


def train_options(model: str = ModelConfig.model, data: str = "pendulum", out: Optional[str] = None, **options) -> SimpleNamespace:
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
            ok = isinstance(value, (bool, np.bool_)) or (value is None and default is None)
            want = "a bool" + (" or None" if default is None else "")
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
