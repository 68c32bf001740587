"""The built-in data sources: the one statement of which SOURCE names (``dvae train --data pendulum``)
are built in, and where each one's loader lives.

A built-in source is generated, not read: collected from an environment, which the data layer does not
do (it reads files). The registry therefore names each loader by its entry point, ``"module:function"``
(as Gymnasium registers its environments), and imports it only when the source is loaded; nothing in
``dvae`` imports the module that collects (``envs``). A loader is ``loader(seed=, episodes=, steps=)``
returning a :class:`~dvae.data.sequences.SequenceData`.

The loader of SOURCE strings, :func:`dvae.data.load_source`, knows no built-in name itself: its caller
passes them (``builtins=builtin_loaders()``: ``dvae.run.load_data``, ``envs.sources.load_source``).
Every other reader of SOURCE strings asks this registry too: :mod:`dvae.data.fingerprint` (a built-in
source is not a path: no absolute form, no fingerprint) and ``dvae.fit`` (whether a string names data).
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable, Dict

BUILTIN_SOURCES: Dict[str, str] = {"pendulum": "envs.sources:load_pendulum"}
"""Built-in SOURCE name -> the entry point ``"module:function"`` of its loader."""


def is_builtin(source: str) -> bool:
    """Whether ``source`` is a built-in SOURCE name (not a path)."""
    return source in BUILTIN_SOURCES


def builtin_loader(name: str) -> Callable:
    """The loader of the built-in source ``name``, imported from its entry point."""
    module, _, function = BUILTIN_SOURCES[name].partition(":")
    return getattr(importlib.import_module(module), function)


def builtin_loaders() -> Dict[str, Callable]:
    """name -> loader of every built-in source, as :func:`dvae.data.load_source` takes them
    (``builtins=``); each imports its module only when it is called."""
    return {name: functools.partial(_load, name) for name in BUILTIN_SOURCES}


def _load(name: str, **kwargs):
    return builtin_loader(name)(**kwargs)
