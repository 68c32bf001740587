"""Sequence data sets: trajectory .npz files, polyphonic pickles, and the SOURCE strings that name them.

Every loader returns a :class:`~dvae.data.sequences.SequenceData` with deterministic train/valid/test splits. Sequences
are kept as lists of float32 numpy arrays ``x_i`` (L_i, x_dim) and ``u_i`` (L_i, u_dim); batching
and padding happen in :func:`dvae.data.batch.collate`.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import Callable, List, Mapping, Optional

import numpy as np

from dvae.data.safe_pickle import safe_load
from dvae.data.sequences import SPLITS, SequenceData, split_indices
from dvae.errors import DataError
from dvae.inputs import check_bytes, meta_count, to_float32

PIANO_LOW, PIANO_KEYS = 21, 88  # MIDI note 21 (A0) is column 0 of an 88-key piano roll


def _first_nonfinite(path, name, arr, lengths=None, allow_nan=False):
    """Raise DataError naming the first NaN/inf of ``arr`` (N, T, ...) within the real steps (with
    ``allow_nan``: the first inf; NaN entries are missing observations)."""
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if lengths is not None:
        steps = np.arange(arr.shape[1])
        valid = steps[None, :] < lengths[:, None]  # (N, T)
        bad &= valid.reshape(valid.shape + (1,) * (arr.ndim - 2))
    if bad.any():
        where = np.argwhere(bad)[0]
        value = arr[tuple(where)]
        extra = f", dim {where[2]}" if arr.ndim > 2 else ""
        hint = " (a NaN is a missing entry only with --missing nan)" if np.isnan(value) and name == "obs" else ""
        raise DataError(f"{path}: {name} has {value} (nan/inf) at sequence {where[0]}, step {where[1]}{extra}{hint}")


def _check_bounds(path, actions, lengths, low, high):
    """Raise DataError at the first real action outside [low, high]."""
    for name, bound in (("action_low", low), ("action_high", high)):
        if np.asarray(bound).dtype.kind not in "biuf":
            raise DataError(f"{path}: {name} must be a real numeric array, got dtype {np.asarray(bound).dtype}")
    low, high = np.asarray(low, np.float64).ravel(), np.asarray(high, np.float64).ravel()
    if actions.ndim != 3 or low.shape != (actions.shape[2],) or high.shape != low.shape:
        raise DataError(f"{path}: action_low/action_high must have shape (act_dim,) = ({actions.shape[-1]},)")
    tol = 1e-5 * np.maximum(1.0, np.maximum(np.abs(low), np.abs(high)))
    real = (np.arange(actions.shape[1])[None, :] < lengths[:, None])[..., None]  # (N, T, 1)
    bad = real & ((actions < low - tol) | (actions > high + tol))
    if bad.any():
        i, t, d = np.argwhere(bad)[0]
        raise DataError(f"{path}: actions has {actions[i, t, d]} outside the action space "
                        f"[{low[d]}, {high[d]}] at sequence {i}, step {t}, dim {d}")


def _frames(path, obs, frame_shape, num_obs):
    """Check frames (N, T+1, H*W) and binarize them: pixel values in [0, 1] (uint8: 0..255), 1 where > 0.5."""
    H, W = (int(v) for v in frame_shape)
    if obs.shape[-1] != H * W:
        raise DataError(f"{path}: obs_shape {[H, W]} does not match obs_dim {obs.shape[-1]}")
    if H % 4 or W % 4 or H < 8 or W < 8:
        raise DataError(f"{path}: frames of {H}x{W} pixels: the conv nets need sides that are multiples of 4, at least 8")
    if obs.dtype == np.uint8:
        obs = obs.astype(np.float32) / 255.0
    real = (np.arange(obs.shape[1])[None, :] < num_obs[:, None])[..., None]  # (N, T+1, 1)
    bad = real & ((obs < 0) | (obs > 1))
    if bad.any():
        i, t, d = np.argwhere(bad)[0]
        raise DataError(f"{path}: obs has {obs[i, t, d]} outside [0, 1] in a frame at sequence {i}, step {t}, "
                        f"pixel {d} (frames hold intensities in [0, 1] or uint8)")
    return (obs > 0.5).astype(np.float32)


def _conditions(path, n, cond=None, labels=None, meta=None) -> Optional[np.ndarray]:
    """Per-sequence conditions (N, c_dim) float32 from ``cond`` (N, c_dim) float or ``labels`` (N,) int
    (one-hot over ``meta["num_labels"]`` classes, else max + 1; sets it in ``meta``)."""
    if cond is not None and labels is not None:
        raise DataError(f"{path}: give either 'cond' or 'labels', not both")
    if cond is not None:
        cond = np.asarray(cond)
        if cond.ndim == 1:
            cond = cond[:, None]  # (N, 1)
        if cond.ndim != 2 or cond.shape[0] != n or cond.dtype.kind not in "biuf":
            raise DataError(f"{path}: cond must be a real array of shape ({n}, c_dim), got {cond.shape} {cond.dtype}")
        bad = np.argwhere(~np.isfinite(cond.astype(np.float64)))
        if bad.size:
            raise DataError(f"{path}: cond has {cond[tuple(bad[0])]} (nan/inf) at sequence {bad[0][0]}, dim {bad[0][1]}")
        return to_float32(path, "cond", cond, axes=("sequence", "dim"))
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: labels must be an integer array of shape ({n},), got {labels.shape} {labels.dtype}")
        k = meta_count(path, meta, "num_labels") if meta is not None else None
        k = k if k is not None else max(1, int(labels.max()) + 1)
        check_bytes(4 * n * k, f"one-hot labels ({n} x {k} classes)", path)
        bad = np.flatnonzero((labels < 0) | (labels >= k))
        if bad.size:
            raise DataError(f"{path}: labels has {labels[bad[0]]} outside 0..{k - 1} at sequence {bad[0]}")
        if meta is not None:
            meta["num_labels"] = k
        onehot = np.zeros((n, k), np.float32)  # (N, k) one-hot
        onehot[np.arange(n), labels] = 1.0
        return onehot
    return None


def from_trajectories(obs, actions=None, lengths=None, path="<arrays>", meta=None, action_bounds=None,
                      cond=None, labels=None, frame_shape=None, missing: bool = False) -> SequenceData:
    """Build SequenceData from arrays in the trajectory layout (see :func:`load_npz`).

    ``action_bounds``: optional (low, high) arrays (act_dim,) of a Box action space; actions outside
    them (beyond a relative tolerance of 1e-5) are refused. ``cond`` (N, c_dim) float or ``labels``
    (N,) int: per-sequence conditions (labels one-hot). ``missing``: NaN entries of ``obs`` are
    missing observations (kept as NaN; ``collate`` turns them into an observation mask); else refused.

    Frames: ``obs`` of shape (N, T+1, H, W), or (N, T+1, H*W) with ``frame_shape`` = (H, W), holds
    images with intensities in [0, 1] (or uint8). They are flattened and binarized at 0.5 (kind
    "binary", a Bernoulli emitter, so every bound is a true bound on the binarized frames), and
    ``meta["frame_shape"]`` = [H, W] tells ``dvae train`` to build the conv DMM."""
    obs = np.asarray(obs)
    if obs.ndim == 4:  # (N, T+1, H, W) frames
        frame_shape = obs.shape[2:]
        obs = obs.reshape(obs.shape[:2] + (-1,))  # (N, T+1, H*W)
    if obs.ndim == 2:
        obs = obs[..., None]  # (N, T+1, 1)
    if obs.ndim != 3:
        raise DataError(f"{path}: obs must have shape (N, T+1, obs_dim), got {obs.shape}")
    if obs.dtype.kind not in "biuf":  # bool, integers, floats; not complex, strings, dates, objects
        raise DataError(f"{path}: obs must be a real numeric array, got dtype {obs.dtype}")
    N, T1, _ = obs.shape
    if N == 0 or T1 == 0:
        raise DataError(f"{path}: obs is empty (shape {obs.shape})")
    meta = dict(meta or {})
    if actions is not None:
        actions = np.asarray(actions)
        if actions.dtype.kind not in "biuf":
            raise DataError(f"{path}: actions must be a real numeric array, got dtype {actions.dtype}")
        if actions.shape[:1] != (N,) or actions.ndim not in (2, 3):
            raise DataError(f"{path}: actions must have shape (N, T[, act_dim]) with N = {N}, got {actions.shape}")
        if actions.shape[1] != T1 - 1:
            raise DataError(f"{path}: actions have {actions.shape[1]} steps but obs has {T1} "
                            f"(expected T = {T1 - 1} actions for T+1 observations)")
    if lengths is None:
        lengths = np.full(N, T1 - 1, dtype=np.int64)
    else:
        lengths = np.asarray(lengths)
        if lengths.shape != (N,) or not np.issubdtype(lengths.dtype, np.integer):
            raise DataError(f"{path}: lengths must be an integer array of shape ({N},), got {lengths.shape} {lengths.dtype}")
        bad = np.flatnonzero((lengths < 0) | (lengths > T1 - 1))
        if bad.size:
            raise DataError(f"{path}: lengths[{bad[0]}] = {lengths[bad[0]]} is outside 0..{T1 - 1}")
    num_obs = lengths.astype(np.int64) + 1  # observations per sequence: actions + 1
    _first_nonfinite(path, "obs", obs.astype(np.float64), num_obs, allow_nan=missing)
    real_steps = (np.arange(T1)[None, :] < num_obs[:, None])[..., None]  # (N, T+1, 1)
    if frame_shape is None:  # after the cast too: a float64 beyond float32's range would become inf
        obs = to_float32(path, "obs", obs, real_steps)
    kind = "continuous"
    if frame_shape is not None:
        obs, kind = _frames(path, obs, frame_shape, num_obs), "binary"
        meta["frame_shape"] = [int(v) for v in frame_shape]
    xs = [obs[i, :num_obs[i]].astype(np.float32) for i in range(N)]  # each (L_i, obs_dim)
    us = None
    if actions is not None:
        if actions.ndim == 2:  # discrete actions (N, T) -> one-hot
            if not np.issubdtype(actions.dtype, np.integer):
                raise DataError(f"{path}: 2-D actions must be integer (discrete), got {actions.dtype}")
            n_act = meta_count(path, meta, "num_actions")
            if n_act is None:
                n_act = max(1, int(actions.max()) + 1 if actions.size else 1)
            check_bytes(4 * N * actions.shape[1] * n_act, f"one-hot actions ({N} x {actions.shape[1]} x {n_act} "
                        "num_actions)", path)
            for i in range(N):
                a = actions[i, :lengths[i]]
                bad = np.flatnonzero((a < 0) | (a >= n_act))
                if bad.size:
                    raise DataError(f"{path}: actions has {a[bad[0]]} outside 0..{n_act - 1} "
                                    f"at sequence {i}, step {bad[0]}")
            onehot = np.zeros(actions.shape + (n_act,), np.float32)  # (N, T, n_act)
            np.put_along_axis(onehot, np.clip(actions, 0, n_act - 1)[..., None].astype(np.int64), 1.0, axis=-1)
            meta["num_actions"], meta["actions"] = n_act, "discrete"  # what the model's u are: one-hot
            actions = onehot
        _first_nonfinite(path, "actions", actions.astype(np.float64), lengths)
        actions = to_float32(path, "actions", actions, (np.arange(actions.shape[1])[None, :] < lengths[:, None])[..., None])
        if action_bounds is not None:
            _check_bounds(path, actions, lengths, *action_bounds)
        last = np.zeros((N, 1, actions.shape[2]), np.float32)  # no control after the last observation
        act = np.concatenate([actions.astype(np.float32), last], axis=1)  # (N, T+1, u_dim)
        act[np.arange(T1)[None, :] >= lengths[:, None]] = 0.0  # padding (and each episode's last slot)
        us = [act[i, :num_obs[i]] for i in range(N)]
    cs = _conditions(path, N, cond, labels, meta)
    return SequenceData(xs, us, split_indices(N), kind, path, meta, cs)


def load_npz(path: str, missing: bool = False) -> SequenceData:
    """Load a trajectory .npz: ``obs`` (N, T+1, obs_dim) required; ``actions`` (N, T, act_dim) float or
    (N, T) int (discrete, one-hot here); ``lengths`` (N,) actions per episode for ragged episodes;
    ``cond`` (N, c_dim) float or ``labels`` (N,) int per-sequence conditions (labels one-hot, over a
    scalar ``num_labels`` classes when the file gives it).
    Frames: ``obs`` (N, T+1, H, W), or flattened with ``frame_shape`` = [H, W] (as ``dvae collect``
    writes for an image observation space); see :func:`from_trajectories`.
    ``missing``: NaN entries of ``obs`` are missing observations instead of bad input."""
    from dvae.inputs import check_npz, open_regular

    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, UnicodeError)
    fileobj = open_regular(path, ".npz file")  # a regular file (not a FIFO or a device), opened once
    with fileobj:
        if fileobj.read(4) != b"PK\x03\x04" and fileobj.seek(0) == 0 and fileobj.read(6) == b"\x93NUMPY":
            raise DataError(f"{path}: not an .npz archive (a single array?)")
        fileobj.seek(0)
        check_npz(path, fileobj)  # every declared size within the limit before anything is inflated
        try:
            f = np.load(fileobj, allow_pickle=False)
        except unreadable as e:
            raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {str(e)[:200]})") from None
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not an .npz archive (a single array?)")
        with f:
            if "obs" not in f.files:
                raise DataError(f"{path}: no 'obs' array (found {', '.join(f.files)[:200] or 'nothing'})")
            try:
                arrays = {k: f[k] for k in f.files}
            except unreadable as e:
                raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {str(e)[:200]})") from None
    meta = {k: v.item() for k, v in arrays.items() if v.ndim == 0}
    bounds = None
    if "action_low" in arrays and "action_high" in arrays:
        bounds = (arrays["action_low"], arrays["action_high"])
    frame_shape = None
    if "frame_shape" in arrays and arrays["obs"].ndim == 3:
        frame_shape = arrays["frame_shape"]  # flattened frames (dvae collect on an image env)
        if frame_shape.shape != (2,):
            raise DataError(f"{path}: frame_shape must be (H, W), got {frame_shape.tolist()}")
    return from_trajectories(arrays["obs"], arrays.get("actions"), arrays.get("lengths"), path, meta, bounds,
                             arrays.get("cond"), arrays.get("labels"), frame_shape=frame_shape, missing=missing)


def _is_note(n) -> bool:
    """A MIDI note number of the 88-key range: an integer (or integral float) in 21..108."""
    if isinstance(n, bool) or not isinstance(n, (int, float, np.integer, np.floating)):
        return False
    return float(n).is_integer() and PIANO_LOW <= n < PIANO_LOW + PIANO_KEYS


def load_polyphonic(path: str) -> SequenceData:
    """Load a polyphonic pickle (Boulanger-Lewandowski layout) as 88-key binary piano rolls.

    The file holds ``{"train": [...], "valid": [...], "test": [...]}``; each sequence is a list of
    time steps; each step a tuple of MIDI note numbers 21..108 (possibly empty).
    """
    data = safe_load(path)
    if not isinstance(data, dict) or not all(s in data for s in SPLITS):
        raise DataError(f"{path}: expected a dict with keys train, valid, test")
    xs, splits = [], {}
    total_steps = 0  # memo references can repeat one long sequence many times: count before allocating
    for split in SPLITS:
        if not isinstance(data[split], (list, tuple)):
            raise DataError(f"{path}: {split} must be a list of sequences")
        total_steps += sum(len(seq) for seq in data[split] if isinstance(seq, (list, tuple)))
    check_bytes(4 * PIANO_KEYS * total_steps, f"piano rolls of {total_steps} steps", path)
    for split in SPLITS:
        splits[split] = []
        for i, seq in enumerate(data[split]):
            if not isinstance(seq, (list, tuple)) or len(seq) == 0:
                raise DataError(f"{path}: {split} sequence {i} has no time steps (or is not a list)")
            roll = np.zeros((len(seq), PIANO_KEYS), dtype=np.float32)  # (L_i, 88)
            for t, notes in enumerate(seq):
                if not isinstance(notes, (list, tuple, set, frozenset)):
                    raise DataError(f"{path}: {split} sequence {i}, step {t}: expected a tuple of notes, "
                                    f"got {str(notes)[:80]}")
                if len(notes) > PIANO_KEYS:
                    raise DataError(f"{path}: {split} sequence {i}, step {t}: {len(notes)} notes, more than the "
                                    f"{PIANO_KEYS} keys")
                for n in notes:
                    if not _is_note(n):
                        raise DataError(f"{path}: {split} sequence {i}, step {t}: note {n!r} outside 21..108")
                    roll[t, int(n) - PIANO_LOW] = 1.0
            splits[split].append(len(xs))
            xs.append(roll)
    if not splits["train"]:
        raise DataError(f"{path}: the train split is empty")
    return SequenceData(xs, None, splits, "binary", path, {"format": "polyphonic"})


def load_source(source: str, seed: int = 0, episodes: int = 128, steps: int = 64, missing: bool = False,
                tokens: str = "words", min_count: int = 1, vocab: Optional[List[str]] = None,
                builtins: Optional[Mapping[str, Callable[..., SequenceData]]] = None) -> SequenceData:
    """Dispatch on a SOURCE string: a built-in name, an .npz file, a CSV table or a single .npy array
    (:mod:`dvae.data.tabular`), a polyphonic pickle, a text file
    (``*.txt`` or ``text:PATH``: one token sequence per line, see :func:`dvae.data.text.load_text`), or a
    directory of trajectory shards (a manifest.json) or of .npy arrays, read lazily (:mod:`dvae.data.lazy`).

    ``missing``: NaN entries of a trajectory .npz are missing observations. ``tokens``, ``min_count``,
    ``vocab``: text only (``vocab``: a trained run's vocabulary, used instead of building one).
    ``builtins``: the built-in names, name -> ``loader(seed=, episodes=, steps=)`` returning a
    :class:`SequenceData`. This loader knows none itself (it collects from no environment): the
    registry :mod:`dvae.data.sources` lists them (``pendulum``), and ``dvae.run.load_data`` and
    ``envs.sources.load_source`` pass its ``builtin_loaders()``."""
    builtins = {} if builtins is None else builtins
    if source.startswith("text:") or source.endswith(".txt"):
        from dvae.data.text import load_text

        path = source[len("text:"):] if source.startswith("text:") else source
        data = load_text(path, tokens=tokens, min_count=min_count, vocab=vocab)
    elif source in builtins:
        data = builtins[source](seed=seed, episodes=episodes, steps=steps)
    elif os.path.isdir(source) or os.path.basename(source) == "manifest.json":
        from dvae.data.lazy import load_lazy  # shards with a manifest, or .npy arrays: read lazily

        data = load_lazy(source)
    elif source.endswith(".npz"):
        data = load_npz(source, missing=missing)
    elif source.endswith(".csv"):
        from dvae.data.tabular import read_csv  # a header row, one column per dimension, an episode column

        obs, actions, lengths, meta = read_csv(source, missing=missing)
        data = from_trajectories(obs, actions, lengths, source, meta, missing=missing)
    elif source.endswith(".npy"):
        from dvae.data.tabular import read_npy  # observations only

        data = from_trajectories(read_npy(source), None, None, source, {"format": "npy"}, missing=missing)
    elif source.endswith((".pickle", ".pkl")):
        data = load_polyphonic(source)
    elif not os.path.exists(source):
        names = f"not a built-in source ({', '.join(builtins)})" if builtins else "no built-in sources given"
        raise DataError(f"{source}: no such file, and {names}")
    else:
        raise DataError(f"{source}: unknown data format (expected .npz, .csv, .npy, .pickle/.pkl, .txt, a directory "
                        "of shards or .npy arrays, or a built-in name); convert other formats to a trajectory .npz: "
                        "np.savez('data.npz', obs=obs, actions=actions) with obs (N, T+1, x_dim), actions (N, T, u_dim)")
    data.source = source
    return data
