"""Faults in training: snapshots of the parameters and optimiser state to go back to, and the error of a
run that keeps diverging.

An update whose loss or gradient is not finite is skipped (:class:`~dvae.infer.svi.ClippedSVI`); the
trainer then restores the last snapshot (:func:`restore_snapshot`), lowers the learning rate and
carries on, until too many faults raise :class:`TrainingDiverged`.
"""

from __future__ import annotations

import copy

import pyro


class TrainingDiverged(FloatingPointError):
    """Raised when non-finite updates persist after ``max_fault_retries`` restores."""


def take_snapshot(model, optim) -> tuple:
    """(parameters, optimiser state) of ``model`` and the Pyro optimiser ``optim``, deep copies."""
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optim.get_state())


def restore_snapshot(snapshot: tuple, model, optim) -> None:
    """Load a :func:`take_snapshot` back into ``model`` and into the optimisers ``optim`` has made (each
    found by its parameter's name in Pyro's parameter store)."""
    model_state, optim_state = snapshot
    model.load_state_dict(model_state)
    store = pyro.get_param_store()
    for p, opt in optim.optim_objs.items():
        name = store.param_name(p)
        if name in optim_state:
            opt.load_state_dict(copy.deepcopy(optim_state[name]))
