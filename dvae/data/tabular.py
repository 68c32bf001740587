"""Single-file inputs besides .npz: a CSV table of trajectories and one ``.npy`` array of observations.

CSV: a header row, then one row per time step. A column named ``episode`` groups the rows into
sequences (consecutive rows with one value form one episode; without the column the whole file is
one sequence). Columns whose names start with ``action`` or ``u_`` (e.g. ``action``, ``u_0``,
``action_torque``) are the controls; every other column is an observation dimension, its name kept
in ``meta["obs_names"]``. The row of step t holds x_t and the control u_t applied after it; the
controls of each episode's last row are not used (they may be empty). Cells are numbers; an empty
observation cell is a missing entry (NaN) under ``--missing nan``.

``.npy``: one array of observations, (N, T+1, x_dim) or (T+1, x_dim) for one trajectory, no
controls (for controls, lengths or metadata: a trajectory ``.npz``, or a directory of ``.npy``
arrays, see :mod:`dvae.data.lazy`).
"""

from __future__ import annotations

import csv
import io
from typing import List

import numpy as np

from dvae.errors import DataError

ACTION_PREFIXES = ("action", "u_")
NPZ_HINT = ("a trajectory .npz: np.savez('data.npz', obs=obs, actions=actions) with obs (N, T+1, x_dim) and "
            "actions (N, T, u_dim), padded, and lengths (N,) for ragged episodes")


def read_csv(path: str, missing: bool = False):
    """A CSV table of trajectories (see the module's docstring) in the trajectory layout: (obs (N, T+1,
    x_dim), actions (N, T, u_dim) or None, lengths (N,), meta); ``from_trajectories`` takes them."""
    from dvae.inputs import max_bytes, read_bytes

    # a regular file (not a FIFO or /dev/zero), at most a 16th of the limit: parsed, its cells take many times that
    raw = read_bytes(path, "CSV file", max_bytes() // 16)
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
    except (UnicodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV file ({type(e).__name__}: {e}); or convert it to {NPZ_HINT}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header row and at least one row of numbers")
    header = [h.strip() for h in rows[0]]
    if any(_is_number(h) for h in header if h):
        raise DataError(f"{path}: line 1 must be a header row naming the columns (found {rows[0][:4]}); "
                        "add one, e.g. episode,x0,x1,u_0")
    if len(set(header)) != len(header) or "" in header:
        raise DataError(f"{path}: line 1: column names must be distinct and non-empty, got {header}")
    episode_col = header.index("episode") if "episode" in header else None
    act_cols = [i for i, h in enumerate(header) if h.lower().startswith(ACTION_PREFIXES)]
    obs_cols = [i for i in range(len(header)) if i != episode_col and i not in act_cols]
    if not obs_cols:
        raise DataError(f"{path}: no observation column (every column is 'episode' or a control: {header})")
    episodes: List[list] = []
    last = object()
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {line}: {len(row)} cells, the header has {len(header)}")
        key = row[episode_col].strip() if episode_col is not None else None
        if key != last:
            episodes.append([])
            last = key
        episodes[-1].append((line, row))
    N, L = len(episodes), max(len(e) for e in episodes)
    from dvae.inputs import check_bytes  # padded to the longest episode: N x L can be far more than the rows

    check_bytes(8 * N * L * (len(obs_cols) + len(act_cols)), f"the padded table of {N} episodes of up to {L} rows",
                path)
    obs = np.zeros((N, L, len(obs_cols)), np.float64)  # (N, T+1, x_dim), padded
    actions = np.zeros((N, L - 1, len(act_cols)), np.float64) if act_cols else None  # (N, T, u_dim)
    for i, ep in enumerate(episodes):
        for t, (line, row) in enumerate(ep):
            obs[i, t] = [_cell(path, line, header[c], row[c], allow_empty=missing) for c in obs_cols]
            if actions is not None and t < len(ep) - 1:
                actions[i, t] = [_cell(path, line, header[c], row[c]) for c in act_cols]
    lengths = np.array([len(e) - 1 for e in episodes], np.int64)
    meta = {"format": "csv", "obs_names": ",".join(header[c] for c in obs_cols)}
    if act_cols:
        meta["action_names"] = ",".join(header[c] for c in act_cols)
    return obs, actions, lengths, meta


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _cell(path, line, column, value, allow_empty: bool = False) -> float:
    value = value.strip()
    if value == "" and allow_empty:
        return float("nan")
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{path}: line {line}, column {column!r}: {value!r} is not a number"
                        + (" (an empty cell is a missing entry only with --missing nan)" if value == "" else "")) from None


def read_npy(path: str) -> np.ndarray:
    """One ``.npy`` array of observations, (N, T+1, x_dim) or (T+1, x_dim): returned as (N, T+1, x_dim)."""
    from dvae.inputs import check_npy, open_regular

    check_npy(path)  # a regular file whose declared size is within the limit, before anything is allocated
    try:
        with open_regular(path, ".npy file") as f:
            arr = np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: not a single .npy array; for several arrays write {NPZ_HINT}")
    if arr.ndim == 2:
        arr = arr[None]  # one trajectory (1, T+1, x_dim)
    if arr.ndim != 3:
        raise DataError(f"{path}: a .npy input holds observations (N, T+1, x_dim) or (T+1, x_dim), got shape "
                        f"{arr.shape}; with controls or ragged episodes convert it to {NPZ_HINT}")
    return arr
