"""Trajectory data read lazily from disk: an epoch streams sequences from the files, memory stays bounded.

Two layouts, both the trajectory layout of :func:`dvae.data.datasets.load_npz` (``obs`` (N, T+1,
obs_dim) required; ``actions`` (N, T, act_dim) float or (N, T) int; ``lengths`` (N,); metadata):

- a directory of shards with a ``manifest.json`` listing them (``dvae collect --shards K`` writes
  one): each shard an uncompressed ``.npz`` (``np.savez``) in that layout, or a directory of ``.npy``;
- a directory holding ``obs.npy`` (and optionally ``actions.npy``, ``lengths.npy``,
  ``action_low.npy``/``action_high.npy``, 0-d metadata ``.npy`` files, ``meta.json``): one shard.

Only the small arrays (``lengths``, action bounds, metadata) are read when the data is opened. A
sequence is read when it is asked for, with one positioned read of its row of ``obs`` (and of
``actions``): an ``.npy`` array, or an uncompressed member of an ``.npz``, is a header followed by
its rows, so row i lies at a known offset. Nothing is cached: the operating system's page cache
does that, outside the process. (Memory-mapping the files would read the same bytes, but the pages
touched count towards the process's resident memory until the kernel evicts them.)

A sequence is checked when it is read, with the checks and messages of the in-memory loader (NaN or
inf in a real step, a discrete action out of range, an action outside the action-space bounds):
bad data raises :class:`~dvae.errors.DataError` naming the shard file, the sequence (its row in
that file) and the step, when the epoch reaches it.

The sequences and their splits are those :func:`~dvae.data.datasets.load_npz` gives on the same
arrays concatenated (tested): the same ``x_i``, ``u_i``, split by the same seeded permutation.
"""

from __future__ import annotations

import collections.abc
import json
import os
import struct
import zipfile
from typing import Callable, Dict, List, Optional

import numpy as np

from dvae.data.sequences import SequenceData, split_indices
from dvae.errors import DataError
from dvae.inputs import (check_bytes, check_npy, max_bytes, meta_count, open_regular, read_bytes, real_dtype,
                          to_float32)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "dvae-trajectory-shards"
ROW_ARRAYS = ("obs", "actions")  # read a row at a time; every other array is small and read at once


def _member_offset(path: str, member: str) -> int:
    """Byte offset of the .npy data of ``member`` inside an uncompressed .npz."""
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(member + ".npy")
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    except KeyError:
        raise DataError(f"{path}: no '{member}' array") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise DataError(f"{path}: '{member}' is compressed (np.savez_compressed); data read lazily must be "
                        "stored uncompressed (np.savez, or .npy files)")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise DataError(f"{path}: corrupt .npz (no local header for '{member}')")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


class ArrayRows:
    """Rows of one array stored in .npy format in a file (an .npy file, or an uncompressed member of an
    .npz): ``read(i)`` is one positioned read of row i's bytes; nothing is kept."""

    def __init__(self, path: str, member: Optional[str] = None):
        self.path, self.name = path, member or os.path.basename(path)
        start = 0 if member is None else _member_offset(path, member)
        try:
            with open_regular(path, ".npy data") as f:
                f.seek(start)
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
                self.offset = f.tell()
        except DataError:
            raise
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: {self.name}: not a readable .npy array ({e})") from None
        if fortran or dtype.hasobject or len(shape) == 0:
            raise DataError(f"{path}: {self.name}: expected a C-ordered numeric array with rows, got shape {shape}, "
                            f"dtype {dtype}{', Fortran order' if fortran else ''}")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        size = os.path.getsize(path)
        if self.offset + self.row_bytes * shape[0] > size:
            raise DataError(f"{path}: {self.name}: truncated (the header promises shape {shape})")

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, i: int) -> np.ndarray:
        """Row ``i``, shape ``shape[1:]`` (read-only)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            buf = os.pread(fd, self.row_bytes, self.offset + i * self.row_bytes)
        finally:
            os.close(fd)
        if len(buf) != self.row_bytes:
            raise DataError(f"{self.path}: {self.name}: row {i} is truncated")
        return np.frombuffer(buf, dtype=self.dtype).reshape(self.shape[1:])


class Shard:
    """One file (or .npy directory) in the trajectory layout: row readers for ``obs``/``actions``, the
    small arrays in memory, shapes checked as :func:`~dvae.data.datasets.from_trajectories` checks them."""

    def __init__(self, path: str):
        self.path = path
        small: Dict[str, np.ndarray] = {}
        rows: Dict[str, ArrayRows] = {}
        if os.path.isdir(path):
            names = {f[:-4]: os.path.join(path, f) for f in os.listdir(path) if f.endswith(".npy")}
            if "obs" not in names:
                raise DataError(f"{path}: no obs.npy (found {', '.join(sorted(names)) or 'nothing'})")
            for name, file in names.items():
                if name in ROW_ARRAYS:
                    rows[name] = ArrayRows(file)
                else:
                    small[name] = _load_small(file)
            meta_file = os.path.join(path, "meta.json")
            extra_meta = _read_json(meta_file) if os.path.exists(meta_file) else {}
        else:
            open_regular(path, ".npz shard").close()  # a regular file, not a FIFO or a device
            try:
                with zipfile.ZipFile(path) as z:
                    names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            except FileNotFoundError:
                raise DataError(f"{path}: no such file") from None
            except (OSError, zipfile.BadZipFile) as e:
                raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
            if "obs" not in names:
                raise DataError(f"{path}: no 'obs' array (found {', '.join(names) or 'nothing'})")
            rows = {name: ArrayRows(path, name) for name in names if name in ROW_ARRAYS}
            check_npz_small(path, [n for n in names if n not in ROW_ARRAYS])
            with np.load(path, allow_pickle=False) as f:
                try:
                    small = {name: f[name] for name in names if name not in ROW_ARRAYS}
                except (OSError, ValueError, zipfile.BadZipFile) as e:
                    raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
            extra_meta = {}
        self.meta = {k: v.item() for k, v in small.items() if v.ndim == 0}
        self.meta.update(extra_meta)
        self.obs, self.actions = rows["obs"], rows.get("actions")
        shape = self.obs.shape
        if len(shape) not in (2, 3):
            raise DataError(f"{path}: obs must have shape (N, T+1, obs_dim), got {shape}")
        if self.obs.dtype.kind not in "biuf":  # bool, integers, floats
            raise DataError(f"{path}: obs must be a real numeric array, got dtype {self.obs.dtype}")
        if self.actions is not None and self.actions.dtype.kind not in "biuf":
            raise DataError(f"{path}: actions must be a real numeric array, got dtype {self.actions.dtype}")
        self.n, t1 = shape[0], shape[1]
        self.obs_dim = shape[2] if len(shape) == 3 else 1
        if self.n == 0 or t1 == 0:
            raise DataError(f"{path}: obs is empty (shape {shape})")
        if self.actions is not None:
            a = self.actions.shape
            if a[:1] != (self.n,) or len(a) not in (2, 3):
                raise DataError(f"{path}: actions must have shape (N, T[, act_dim]) with N = {self.n}, got {a}")
            if a[1] != t1 - 1:
                raise DataError(f"{path}: actions have {a[1]} steps but obs has {t1} "
                                f"(expected T = {t1 - 1} actions for T+1 observations)")
            if len(a) == 2 and not np.issubdtype(self.actions.dtype, np.integer):
                raise DataError(f"{path}: 2-D actions must be integer (discrete), got {self.actions.dtype}")
        lengths = small.get("lengths")
        if lengths is None:
            lengths = np.full(self.n, t1 - 1, dtype=np.int64)
        elif lengths.shape != (self.n,) or not np.issubdtype(lengths.dtype, np.integer):
            raise DataError(f"{path}: lengths must be an integer array of shape ({self.n},), got "
                            f"{lengths.shape} {lengths.dtype}")
        bad = np.flatnonzero((lengths < 0) | (lengths > t1 - 1))
        if bad.size:
            raise DataError(f"{path}: lengths[{bad[0]}] = {lengths[bad[0]]} is outside 0..{t1 - 1}")
        self.lengths = lengths.astype(np.int64)  # (N,) actions per sequence
        self.bounds = None
        if "action_low" in small and "action_high" in small:
            for name in ("action_low", "action_high"):
                real_dtype(path, name, small[name])
            low = np.asarray(small["action_low"], np.float64).ravel()
            high = np.asarray(small["action_high"], np.float64).ravel()
            if self.actions is None or len(self.actions.shape) != 3 or low.shape != (self.actions.shape[2],) \
                    or high.shape != low.shape:
                raise DataError(f"{path}: action_low/action_high must have shape (act_dim,)")
            self.bounds = (low, high)


def _load_small(file: str) -> np.ndarray:
    check_npy(file)  # a regular file whose declared size is within the limit
    try:
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{file}: not a readable .npy array ({e})") from None


def _read_json(path: str):
    raw = read_bytes(path, "JSON file", max_bytes() // 16)  # a regular file, within the limit
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


class LazySequences(collections.abc.Sequence):
    """A list-like view of sequences read from disk when indexed: item k is ``fn(read(index[k]))``.

    ``lengths`` gives every item's number of steps without reading it (the trainer's length buckets
    use it); ``take(idx)`` and ``map(fn)`` give new views, reading nothing."""

    def __init__(self, read: Callable[[int], np.ndarray], index: np.ndarray, lengths: np.ndarray,
                 fn: Optional[Callable[[np.ndarray], np.ndarray]] = None):
        self._read, self.index, self.lengths, self._fn = read, np.asarray(index, np.int64), np.asarray(lengths), fn
        assert self.index.shape == self.lengths.shape, (self.index.shape, self.lengths.shape)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.take(range(len(self))[k])
        a = self._read(int(self.index[k]))
        return a if self._fn is None else self._fn(a)

    def take(self, idx) -> "LazySequences":
        idx = np.asarray(list(idx), np.int64)
        return LazySequences(self._read, self.index[idx], self.lengths[idx], self._fn)

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> "LazySequences":
        inner = self._fn
        return LazySequences(self._read, self.index, self.lengths, fn if inner is None else (lambda a: fn(inner(a))))


class LazyTrajectories:
    """Shards in the trajectory layout seen as one data set: ``x(i)``, ``u(i)`` read and check sequence
    i (in shard order), as :func:`~dvae.data.datasets.from_trajectories` would return it."""

    def __init__(self, shards: List[Shard], source: str):
        if not shards:
            raise DataError(f"{source}: no shards")
        self.shards, self.source = shards, source
        first = shards[0]
        for s in shards[1:]:
            if s.obs_dim != first.obs_dim or (s.actions is None) != (first.actions is None) or (
                    s.actions is not None and s.actions.shape[2:] != first.actions.shape[2:]):
                raise DataError(f"{s.path}: obs/actions dimensions differ from those of {first.path}")
        self.starts = np.cumsum([0] + [s.n for s in shards])  # (K+1,)
        self.num_obs = np.concatenate([s.lengths + 1 for s in shards])  # (N,) observations per sequence
        self.meta = dict(first.meta)
        self.discrete = first.actions is not None and len(first.actions.shape) == 2
        self.num_actions = 0
        if self.discrete:
            n_act = meta_count(first.path, self.meta, "num_actions")
            if n_act is None:  # as the in-memory loader: the largest action + 1, here in one streaming pass
                n_act = max(1, max(int(s.actions.read(j).max(initial=0)) + 1 for s in shards for j in range(s.n)))
            longest = max(s.actions.shape[1] for s in shards)
            check_bytes(4 * longest * n_act, f"one sequence's one-hot actions ({longest} x {n_act} num_actions)",
                        first.path)
            self.num_actions = self.meta["num_actions"] = n_act
            self.meta["actions"] = "discrete"  # what the model's u are: one-hot

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def u_dim(self) -> int:
        first = self.shards[0].actions
        return 0 if first is None else (self.num_actions if self.discrete else first.shape[2])

    def _locate(self, i: int):
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        if not 0 <= i < len(self) or k < 0:
            raise IndexError(i)
        return self.shards[k], i - int(self.starts[k])

    def x(self, i: int) -> np.ndarray:
        """x_i (L_i, obs_dim) float32: the real observations of sequence i."""
        shard, j = self._locate(i)
        row = shard.obs.read(j)
        obs = (row[:, None] if row.ndim == 1 else row)[:shard.lengths[j] + 1]  # (L_i, obs_dim)
        _check_finite(shard.path, "obs", obs, j)
        return to_float32(shard.path, f"obs of sequence {j}", obs, axes=("step", "dim"))

    def u(self, i: int) -> np.ndarray:
        """u_i (L_i, u_dim) float32: the controls after each real observation, zero after the last."""
        shard, j = self._locate(i)
        L = int(shard.lengths[j])
        a = shard.actions.read(j)  # (T,) or (T, act_dim)
        if self.discrete:
            real = a[:L]
            bad = np.flatnonzero((real < 0) | (real >= self.num_actions))
            if bad.size:
                raise DataError(f"{shard.path}: actions has {real[bad[0]]} outside 0..{self.num_actions - 1} "
                                f"at sequence {j}, step {bad[0]}")
            onehot = np.zeros((len(a), self.num_actions), np.float32)  # (T, n_act)
            onehot[np.arange(len(a)), np.clip(a, 0, self.num_actions - 1)] = 1.0
            a = onehot
        _check_finite(shard.path, "actions", a[:L], j)
        a = to_float32(shard.path, f"actions of sequence {j}", a, axes=("step", "dim"))
        if shard.bounds is not None:
            low, high = shard.bounds
            tol = 1e-5 * np.maximum(1.0, np.maximum(np.abs(low), np.abs(high)))
            bad = (a[:L] < low - tol) | (a[:L] > high + tol)  # (L, act_dim)
            if bad.any():
                t, d = np.argwhere(bad)[0]
                raise DataError(f"{shard.path}: actions has {a[t, d]} outside the action space "
                                f"[{low[d]}, {high[d]}] at sequence {j}, step {t}, dim {d}")
        act = np.concatenate([a.astype(np.float32), np.zeros((1, a.shape[1]), np.float32)], 0)  # (T+1, u_dim)
        act[L:] = 0.0  # padding (and the episode's last slot)
        return act[:L + 1]

    def sequences(self):
        """(xs, us) as lazy views over every sequence (us None for uncontrolled data)."""
        index = np.arange(len(self))
        xs = LazySequences(self.x, index, self.num_obs)
        us = None if self.shards[0].actions is None else LazySequences(self.u, index, self.num_obs)
        return xs, us


def _check_finite(path: str, name: str, arr: np.ndarray, j: int) -> None:
    """Raise DataError at the first NaN/inf of one sequence's real steps ``arr`` (L, dim)."""
    bad = ~np.isfinite(arr.astype(np.float64))
    if bad.any():
        t, d = np.argwhere(bad)[0]
        raise DataError(f"{path}: {name} has {arr[t, d]} (nan/inf) at sequence {j}, step {t}, dim {d}")


def shard_paths(source: str) -> List[str]:
    """The shards a lazily read SOURCE names: a manifest (or its directory), or one .npy directory."""
    manifest = source if os.path.basename(source) == MANIFEST else os.path.join(source, MANIFEST)
    if os.path.lexists(manifest):  # a FIFO or a link too: read_bytes refuses them
        m = _read_json(manifest)
        if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or not isinstance(m.get("shards"), list):
            raise DataError(f"{manifest}: not a shard manifest (expected format {MANIFEST_FORMAT!r} and a "
                            "list of shards)")
        root = os.path.dirname(os.path.abspath(manifest))
        paths = []
        for k, entry in enumerate(m["shards"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
                raise DataError(f"{manifest}: shards[{k}] must be an object with a 'file'")
            paths.append(os.path.join(root, entry["file"]))
        return paths
    if os.path.isdir(source) and os.path.exists(os.path.join(source, "obs.npy")):
        return [source]
    raise DataError(f"{source}: a directory without {MANIFEST} or obs.npy (not lazily readable trajectory data)")


def load_lazy(source: str):
    """Open lazily read trajectory data: returns a :class:`~dvae.data.sequences.SequenceData` whose
    ``xs``/``us`` are :class:`LazySequences` (nothing but metadata read yet)."""
    paths = shard_paths(source)
    shards = [Shard(p) for p in paths]
    manifest = source if os.path.basename(source) == MANIFEST else os.path.join(source, MANIFEST)
    if os.path.lexists(manifest):  # a FIFO or a link too: read_bytes refuses them
        for k, (entry, shard) in enumerate(zip(_read_json(manifest)["shards"], shards)):
            if "episodes" in entry and entry["episodes"] != shard.n:
                raise DataError(f"{manifest}: shards[{k}] lists {entry['episodes']} episodes but {shard.path} "
                                f"holds {shard.n}")
    data = LazyTrajectories(shards, source)
    xs, us = data.sequences()
    meta = {k: v for k, v in data.meta.items() if isinstance(v, (str, int, float, bool))}
    meta.pop("first_episode", None)  # of the first shard only
    meta.update(lazy=True, shards=len(shards))
    return SequenceData(xs, us, split_indices(len(data)), "continuous", source, meta)


def write_manifest(directory: str, shards: List[dict], meta: Optional[dict] = None) -> str:
    """Write ``directory/manifest.json`` listing ``shards`` (each ``{"file": name, "episodes": n, ...}``,
    names relative to ``directory``), atomically. Returns its path."""
    from dvae.files import write_json

    body = {"format": MANIFEST_FORMAT, "version": 1, "episodes": int(sum(s["episodes"] for s in shards)),
            "shards": shards, **(meta or {})}
    return write_json(os.path.join(directory, MANIFEST), body)


def check_npz_small(path: str, names: List[str]) -> None:
    """The declared sizes of an .npz's small arrays ``names`` (read whole) within the limit."""
    from dvae.inputs import declared_nbytes, npy_header

    total = 0
    try:
        with zipfile.ZipFile(path) as z:
            for name in names:
                with z.open(name + ".npy") as m:
                    shape, _, dtype = npy_header(m)
                if dtype.hasobject:
                    raise DataError(f"{path}: {name} has dtype {dtype} (objects): only numeric arrays are read")
                total += declared_nbytes(shape, dtype)
                check_bytes(total, f"'{name}' of declared shape {tuple(shape)} {dtype}", path)
    except DataError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, KeyError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {str(e)[:200]})") from None
