"""Built-in data sources: SOURCE names (``dvae train --data pendulum``) that collect their data from an env.

The data layer (:mod:`dvae.data`) reads files and collects from no environment; the names it cannot
know live here, beside collection; :data:`dvae.data.sources.BUILTIN_SOURCES` is the one list of them
(each name with its loader's entry point here). :func:`load_source` reads any SOURCE string: these
names, and every file or directory that :func:`dvae.data.load_source` reads.

This module imports ``dvae.data`` (its public names only); ``import envs`` does not import it.
"""

from __future__ import annotations

from dvae.data import SequenceData, from_trajectories
from dvae.data import load_source as _load_source
from dvae.data.sources import builtin_loaders
from envs.collect import collect


def load_pendulum(seed: int = 0, episodes: int = 128, steps: int = 64) -> SequenceData:
    """The built-in source ``pendulum``: Gymnasium's Pendulum-v1 under smooth (Ornstein-Uhlenbeck) random
    torques, ``episodes`` episodes of ``steps`` actions (``steps + 1`` observations) collected with ``seed``."""
    from dvae.inputs import check_bytes

    if episodes < 1 or steps < 1:
        raise ValueError(f"pendulum: --episodes {episodes} and --steps {steps} must be >= 1")
    # observations (3) and torques (1) of every step, float32, before any episode is collected
    check_bytes(4 * episodes * (steps + 1) * 4, f"{episodes} episodes of {steps} steps", "pendulum")
    d = collect("Pendulum-v1", episodes=episodes, steps=steps, policy="ou", seed=seed)
    meta = {"env_id": "Pendulum-v1", "seed": seed, "episodes": episodes, "steps": steps, "policy": "ou"}
    return from_trajectories(d["obs"], d["actions"], d["lengths"], "pendulum", meta,
                             (d["action_low"], d["action_high"]))


def load_source(source: str, **kwargs) -> SequenceData:
    """:func:`dvae.data.load_source` with the built-in names of :data:`dvae.data.sources.BUILTIN_SOURCES`
    (same keywords)."""
    return _load_source(source, builtins=builtin_loaders(), **kwargs)
