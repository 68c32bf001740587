"""The state of a state-space model, as the contract of :class:`dvae.models.base.DynamicalVAE` passes it.

A ``State`` is a dict of batch-first tensors, one row per sequence (or per particle, or per imagined
rollout): ``state["z"]`` (N, z_dim) is the latent of the current step, and the other keys are the
family's deterministic parts (a recurrence's hidden state, the condition c, ...). A value may also be
a tuple of tensors (an LSTM's (h, c)) or None (an absent part, e.g. no condition). Everything written
over the contract (prediction, the world model, the particle filter) moves states with the helpers
below and never looks inside one.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import torch

State = Dict[str, Any]
"""Batch-first tensors (N, ...), tuples of them, or None, by name; ``"z"`` the current latent."""


def map_values(fn: Callable[[torch.Tensor], torch.Tensor], value):
    """``fn`` applied to every tensor of a value (a tensor, a tuple of tensors, or None)."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(map_values(fn, v) for v in value)
    return fn(value)


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    """``fn`` applied to every tensor of the state."""
    return {k: map_values(fn, v) for k, v in state.items()}


def where_state(keep: torch.Tensor, new: State, old: State) -> State:
    """Row-wise choice: ``new`` where ``keep`` (N,) is true, else ``old`` (keys of ``new``)."""
    def pick(a, b):
        if a is None:
            return None
        if isinstance(a, tuple):
            return tuple(pick(x, y) for x, y in zip(a, b))
        return torch.where(keep.reshape((-1,) + (1,) * (a.dim() - 1)), a, b)
    return {k: (v if k not in old else pick(v, old[k])) for k, v in new.items()}


def repeat_state(state: State, n: int) -> State:
    """Each row repeated ``n`` times, row-major: (N, ...) -> (N * n, ...) (row i's copies adjacent)."""
    return map_state(lambda v: v.repeat_interleave(n, 0), state)
