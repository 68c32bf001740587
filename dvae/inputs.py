"""Limits on what input files may make the process read or allocate, and the one bounded file reader.

A file's declared sizes (an ``.npy`` header's shape, a discrete action count, a label count, a text's
vocabulary) are checked against :func:`max_bytes` before anything of that size is allocated, so a
64-byte header declaring terabytes is refused in one line instead of exhausting memory. The limit is
``DVAE_MAX_BYTES`` (bytes, default 1 GiB: far above this project's data sets); raise it in the
environment for larger data, e.g. ``DVAE_MAX_BYTES=16e9 dvae train ...``.

:func:`read_bytes` reads a file only if it is a regular file (a FIFO, ``/dev/zero`` or a directory is
refused; a symlink is followed to what it names, which must be a regular file) and at most a cap of
bytes: every reader of config.json, pickles and text goes through it.
"""

from __future__ import annotations

import os
import stat
from typing import Optional

import numpy as np

from dvae.errors import DataError

DEFAULT_MAX_BYTES = 2 ** 30
ENV_MAX_BYTES = "DVAE_MAX_BYTES"


def max_bytes() -> int:
    """The largest allocation (bytes) an input may ask for: ``DVAE_MAX_BYTES``, default 1 GiB."""
    raw = os.environ.get(ENV_MAX_BYTES)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_BYTES
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value >= 1 and value < float("inf")):
        raise DataError(f"{ENV_MAX_BYTES}={raw[:40]!r}: expected a positive number of bytes")
    return int(value)


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # not reached


def check_bytes(nbytes: float, what: str, where: str, limit: Optional[int] = None) -> None:
    """Raise DataError ``where: what needs N bytes, over the limit`` when ``nbytes`` exceeds the limit."""
    limit = max_bytes() if limit is None else limit
    if not nbytes <= limit:
        raise DataError(f"{where}: {what} needs {_human(float(nbytes))}, over the limit of {_human(limit)} "
                        f"(raise it with {ENV_MAX_BYTES}=BYTES if this is meant)")


def read_bytes(path: str, what: str = "file", limit: Optional[int] = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (default :func:`max_bytes`).

    Opened without blocking (a FIFO is refused, not waited on), checked by ``fstat`` on the open file
    (no race between the check and the read), read to its size and no further (a file that grows while
    read is refused too)."""
    limit = max_bytes() if limit is None else limit
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a {what}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
            raise DataError(f"{path}: {kind}, not a regular {what}")
        check_bytes(st.st_size, f"reading this {what}", path, limit)
        chunks, left = [], st.st_size + 1  # one byte more: a file that grew is refused
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise DataError(f"{path}: grew while it was read (more than {st.st_size} bytes)")
        return b"".join(chunks)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    finally:
        os.close(fd)


def open_regular(path: str, what: str = "file"):
    """A binary file object of a regular file (for readers that seek, such as ``np.load``); the same
    refusals as :func:`read_bytes`, without reading it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device"
        raise DataError(f"{path}: {kind}, not a regular {what}")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def npy_header(f):
    """(shape, fortran_order, dtype) of the .npy stream ``f`` at its start."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    if version == (3, 0) and hasattr(np.lib.format, "_read_array_header"):
        return np.lib.format._read_array_header(f, version)
    raise ValueError(f"unsupported .npy format version {version}")


def declared_nbytes(shape, dtype) -> int:
    """Bytes an array of ``shape`` and ``dtype`` holds, in exact integer arithmetic (no overflow)."""
    n = int(dtype.itemsize)
    for s in shape:
        n *= int(s)
    return n


def check_npz(path: str, f=None) -> None:
    """Check every array of an .npz archive before it is read: a known header, a real-number or bool
    dtype (no objects), and a declared size (summed over the arrays) within :func:`max_bytes`. A
    compressed member is checked on its declared shape, so it cannot inflate beyond it."""
    import zipfile

    limit, total = max_bytes(), 0
    try:
        with zipfile.ZipFile(f if f is not None else path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                with z.open(info) as m:
                    try:
                        shape, _, dtype = npy_header(m)
                    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
                        raise DataError(f"{path}: {name}: not a readable .npy header ({str(e)[:200]})") from None
                if dtype.hasobject:
                    raise DataError(f"{path}: {name} has dtype {dtype} (objects): only numeric arrays are read")
                total += declared_nbytes(shape, dtype)
                check_bytes(total, f"'{name}' of declared shape {tuple(shape)} {dtype} (with the arrays before it)",
                            path, limit)
    except DataError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {str(e)[:200]})") from None
    finally:
        if f is not None:
            f.seek(0)


def check_npy(path: str) -> None:
    """:func:`check_npz` for one .npy file."""
    with open_regular(path, ".npy file") as f:
        try:
            shape, _, dtype = npy_header(f)
        except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
            raise DataError(f"{path}: not a readable .npy header ({str(e)[:200]})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: dtype {dtype} (objects): only numeric arrays are read")
    check_bytes(declared_nbytes(shape, dtype), f"an array of declared shape {tuple(shape)} {dtype}", path)


def real_dtype(path: str, name: str, arr: np.ndarray, integer: bool = False) -> None:
    """Refuse arrays that are not real numbers (bool, integers, floats): complex, strings, bytes,
    datetimes, timedeltas, records and objects. ``integer``: integers (or bool) only."""
    kinds = "biu" if integer else "biuf"
    if arr.dtype.kind not in kinds:
        want = "integers" if integer else "real numbers (bool, integers or floats)"
        raise DataError(f"{path}: {name} has dtype {arr.dtype}: expected {want}")


def meta_count(path: str, meta: dict, key: str) -> Optional[int]:
    """A positive integer metadata entry (``num_actions``, ``num_labels``) or None when absent; anything
    else (a string, a fraction, a negative or zero number, a bool) is refused naming the key."""
    if key not in meta:
        return None
    v = meta[key]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not np.isfinite(v) or float(v) != int(v) or int(v) < 1:
        raise DataError(f"{path}: {key} = {str(v)[:60]!r}: expected a positive integer")
    return int(v)


def to_float32(path: str, name: str, arr: np.ndarray, where=None, axes=("sequence", "step", "dim")) -> np.ndarray:
    """``arr`` as float32, refusing finite values beyond float32's range (they would become inf);
    ``where``: a mask (broadcast to ``arr``) of the entries that count; ``axes``: names of its axes."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        over = np.isinf(out) & np.isfinite(arr)
        if where is not None:
            over &= where
        if over.any():
            pos = np.argwhere(over)[0]
            place = ", ".join(f"{ax} {int(i)}" for ax, i in zip(axes, pos))
            raise DataError(f"{path}: {name} has {float(arr[tuple(pos)])!r} at {place}: beyond float32's range "
                            f"(|x| <= {float(np.finfo(np.float32).max):.4g}); rescale the data")
    return out
