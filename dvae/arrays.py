"""Array inputs of the Python API, checked at the boundary: numpy or torch values become numpy arrays
of the expected shapes, or one ValueError naming the argument, the expected and the given shape or type.

Shapes are batch first: observations (B, C, x_dim), controls (B, steps, u_dim) float or (B, steps) int
(discrete actions, one-hot here). Used by :mod:`dvae.api` and :class:`dvae.trained.Run`.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from dvae.fitting import ARRAYS_SOURCE


def to_numpy(value, name: str, what: str) -> np.ndarray:
    """``value`` (numpy, torch, nested lists) as a real numeric numpy array, or ValueError naming ``name``."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise ValueError(f"{name}: expected {what}, got {type(value).__name__} that is no array ({e})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f"{name}: expected {what} of real numbers, got {type(value).__name__} of dtype {arr.dtype}")
    return arr


def shape_error(name: str, what: str, arr) -> ValueError:
    return ValueError(f"{name}: expected {what}, got shape {tuple(np.shape(arr))}")


def steps_last(arr: np.ndarray, u_dim: int) -> bool:
    """Whether controls ``arr`` have the steps on their last axis: integer (discrete) actions (steps,) or
    (B, steps), or a one-dimensional control given as (steps,)."""
    if np.issubdtype(arr.dtype, np.integer):
        return arr.ndim == 1 or (arr.ndim == 2 and not (u_dim == 1 and arr.shape[-1] == 1))
    return arr.ndim == 1 and u_dim == 1


def is_sequence_list(value) -> bool:
    """A list/tuple whose items are arrays (ragged episodes), as opposed to nested lists of numbers."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        hasattr(v, "shape") or (isinstance(v, (list, tuple)) and len(v) > 0 and isinstance(v[0], (list, tuple)))
        for v in value)


def episodes(data, actions):
    """Observations and actions as (obs (N, T+1, x_dim) padded, actions (N, T[, u_dim]) or None,
    lengths (N,)) from any of the array forms ``fit`` takes."""
    what = "observations (N, T+1, x_dim), a list of (T_i+1, x_dim) arrays or one (T+1, x_dim) trajectory"
    if is_sequence_list(data):
        xs = [to_numpy(x, f"data[{i}]", "a (T_i+1, x_dim) array") for i, x in enumerate(data)]
        for i, x in enumerate(xs):
            if x.ndim != 2 or len(x) == 0:
                raise shape_error(f"data[{i}]", "a (T_i+1, x_dim) array with T_i+1 >= 1", x)
            if x.shape[1] != xs[0].shape[1]:
                raise ValueError(f"data[{i}]: expected x_dim {xs[0].shape[1]} as data[0], got shape {x.shape}")
        us = None
        if actions is not None:
            if not isinstance(actions, (list, tuple)) or len(actions) != len(xs):
                raise ValueError(f"actions: expected a list of {len(xs)} arrays (one per episode of data), got "
                                 f"{type(actions).__name__}" + (f" of {len(actions)}" if hasattr(actions, '__len__') else ""))
            us = [to_numpy(u, f"actions[{i}]", "a (T_i, u_dim) or (T_i,) int array") for i, u in enumerate(actions)]
            for i, (x, u) in enumerate(zip(xs, us)):
                if u.ndim not in (1, 2) or len(u) != len(x) - 1 or (u.ndim == 1 and not np.issubdtype(u.dtype, np.integer)):
                    raise shape_error(f"actions[{i}]", f"({len(x) - 1}, u_dim) float or ({len(x) - 1},) int "
                                       f"(T_i = {len(x) - 1} actions for data[{i}]'s {len(x)} observations)", u)
                if u.ndim == 2 and u.shape[1] != us[0].shape[1]:
                    raise ValueError(f"actions[{i}]: expected u_dim {us[0].shape[1]} as actions[0], got shape {u.shape}")
        N, L = len(xs), max(len(x) for x in xs)
        obs = np.zeros((N, L, xs[0].shape[1]), np.float64)  # (N, T+1, x_dim), padded
        for i, x in enumerate(xs):
            obs[i, :len(x)] = x
        act = None
        if us is not None:
            act = np.zeros((N, L - 1) + us[0].shape[1:], us[0].dtype)  # (N, T[, u_dim]), padded
            for i, u in enumerate(us):
                act[i, :len(u)] = u
        return obs, act, np.array([len(x) - 1 for x in xs], np.int64)
    obs = to_numpy(data, "data", what)
    act = None if actions is None else to_numpy(actions, "actions", "(N, T, u_dim) float or (N, T) int actions")
    if obs.ndim == 2:  # one trajectory (T+1, x_dim)
        obs = obs[None]
        if act is not None:
            if act.ndim == 1 and not np.issubdtype(act.dtype, np.integer):
                act = act[:, None]  # (T,) of a one-dimensional control: (T, 1)
            if act.ndim not in (1, 2):
                raise shape_error("actions", f"({obs.shape[1] - 1}, u_dim) float or ({obs.shape[1] - 1},) int for "
                                   f"one trajectory of {obs.shape[1]} observations", act)
            act = act[None]
    if obs.ndim not in (3, 4):
        raise shape_error("data", what, obs)
    if act is not None:
        T = obs.shape[1] - 1
        if act.ndim not in (2, 3) or act.shape[:2] != (obs.shape[0], T) or \
                (act.ndim == 2 and not np.issubdtype(act.dtype, np.integer)):
            raise shape_error("actions", f"({obs.shape[0]}, {T}, u_dim) float or ({obs.shape[0]}, {T}) int "
                               f"(T = {T} actions between data's {T + 1} observations)", act)
    return obs, act, None


def as_data(data, actions=None, missing: bool = False):
    """``data`` (and ``actions``) as a ``SequenceData``: a SequenceData as it is, arrays through
    ``from_trajectories`` (source ``<arrays>``, the default splits). A SOURCE string is not read here."""
    from dvae.data import SequenceData, from_trajectories

    if isinstance(data, SequenceData):
        if actions is not None:
            raise ValueError("actions: expected None with a SequenceData (it holds its own controls), got "
                             f"{type(actions).__name__}")
        return data
    if data is None:
        raise ValueError("data: expected a SOURCE, a SequenceData or observations, got None")
    from dvae.errors import DataError

    obs, act, lengths = episodes(data, actions)
    try:
        return from_trajectories(obs, act, lengths, path=ARRAYS_SOURCE, missing=missing)
    except DataError as e:  # the loader names the file's fields; here they are the arguments
        msg = str(e).replace(f"{ARRAYS_SOURCE}: obs", "data: obs").replace(f"{ARRAYS_SOURCE}: actions", "actions:")
        raise DataError(msg.replace("--missing nan", 'missing="nan"')) from None


def source_of(data) -> Optional[str]:
    """The SOURCE string of ``data`` when it is one (a str or a path), else None."""
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    return None


def readable_source(source: str) -> bool:
    """Whether ``source`` can be read again later: a built-in name or an existing path."""
    from dvae.data.sources import BUILTIN_SOURCES

    path = source[len("text:"):] if source.startswith("text:") else source
    return source in BUILTIN_SOURCES or os.path.exists(path)


def observations(obs, name: str, x_dim: int, allow_nan: bool = False):
    """Observations (C, x_dim) or (B, C, x_dim) -> ((B, C, x_dim) float32 data units, batched?)."""
    arr = to_numpy(obs, name, f"observations (C, x_dim = {x_dim}) or (B, C, x_dim)")
    batched = arr.ndim == 3
    if arr.ndim == 1 and x_dim == 1:
        arr = arr[:, None]
    if arr.ndim not in (2, 3) or arr.shape[-1] != x_dim or arr.shape[-2] < 1:
        raise shape_error(name, f"(C, {x_dim}) or (B, C, {x_dim}) observations (x_dim = {x_dim})", arr)
    arr = arr.astype(np.float32)
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name}: expected finite values{' (NaN: missing)' if allow_nan else ''}, got "
                         f"{arr[tuple(np.argwhere(bad)[0])]} at index {tuple(int(i) for i in np.argwhere(bad)[0])}")
    return (arr if batched else arr[None]), batched


def controls(actions, name: str, u_dim: int, B: int, steps: int, required: bool = True) -> Optional[np.ndarray]:
    """Controls (steps, u_dim) / (B, steps, u_dim) float or (steps,) / (B, steps) int (one-hot) ->
    (B, steps, u_dim) float32 data units, or None for an uncontrolled model (``u_dim`` 0)."""
    if not u_dim:
        if actions is not None and np.size(to_numpy(actions, name, "actions")):
            raise ValueError(f"{name}: expected None (the model takes no controls, u_dim = 0), got "
                             f"shape {tuple(np.shape(actions))}")
        return None
    want = f"({steps}, {u_dim}) or ({B}, {steps}, {u_dim}) float, or ({steps},) / ({B}, {steps}) int (discrete)"
    if actions is None:
        if not required or steps == 0:
            return np.zeros((B, steps, u_dim), np.float32)
        raise ValueError(f"{name}: expected {want} (the model takes controls, u_dim = {u_dim}), got None")
    arr = to_numpy(actions, name, want)
    if arr.ndim == 1 and u_dim == 1 and not np.issubdtype(arr.dtype, np.integer):
        arr = arr[:, None]  # (steps,) of a one-dimensional control: (steps, 1)
    if steps_last(arr, u_dim):  # discrete actions: integers (steps,) or (B, steps)
        if arr.size and (arr.min() < 0 or arr.max() >= u_dim):
            raise ValueError(f"{name}: expected discrete actions in 0..{u_dim - 1}, got {int(arr.min())}..{int(arr.max())}")
        arr = np.eye(u_dim, dtype=np.float32)[arr]  # one-hot (.., u_dim)
    if arr.ndim == 2:
        arr = np.broadcast_to(arr[None], (B,) + arr.shape)
    if arr.ndim != 3 or arr.shape != (B, steps, u_dim):
        raise shape_error(name, want, actions)
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite values, got {arr[~np.isfinite(arr)][0]}")
    return arr


def check_dims(data, model_config, name: str = "data") -> None:
    """Refuse data (a SequenceData) whose dimensions differ from the run's model, naming the argument
    and the data's source."""
    m = model_config
    if data.x_dim != m.x_dim or data.u_dim != m.u_dim:
        raise ValueError(f"{name}: {data.source}: x_dim {data.x_dim}, u_dim {data.u_dim} do not match the run's "
                         f"model (x_dim {m.x_dim}, u_dim {m.u_dim})")


def check_sample_size(name: str, k: int, model_config, xs, batch_size: int, num_steps: int = 0) -> None:
    """Refuse a sample count ``k`` (argument ``name``) whose tensors, about k x batch x T x (the model's
    widths) floats, would exceed the size limit (DVAE_MAX_BYTES), before any is drawn. ``xs``: the
    sequences (None: ``num_steps`` steps)."""
    from dvae.data.batching import sequence_lengths
    from dvae.inputs import check_bytes

    if k <= 0:
        return
    m = model_config
    width = m.x_dim + m.u_dim + 2 * m.z_dim + m.rnn_dim + m.transition_dim + m.emission_dim
    T = max(sequence_lengths(xs)) if xs is not None and len(xs) else num_steps
    b = min(batch_size, len(xs)) if xs is not None and len(xs) else batch_size
    check_bytes(4 * k * b * max(T, 1) * width, f"{k} samples ({b} sequences x {T} steps x {width} floats each)", name)
