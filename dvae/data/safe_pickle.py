"""A restricted unpickler for data files: plain containers and numbers only.

Pickles run code when loaded. ``safe_load`` admits the opcodes that build lists, tuples, dicts,
strings and numbers, and, through ``find_class``, only sets, numpy bool/integer/float scalars (which
pickles of numpy data need) and ``_codecs.encode`` of a str to latin1 bytes (how Python 3 writes those
scalars' bytes at protocols 0-2); anything else is refused before it is constructed. The file is read
by :func:`dvae.inputs.read_bytes`: a regular file within the size limit.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

from dvae.errors import DataError
from dvae.inputs import max_bytes, read_bytes

_ALLOWED = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # Python 3 pickles of numpy scalars at protocols 0-2: the raw bytes as latin1 text
}


def _numpy_scalar(dtype, data=None):
    """Rebuild a numpy scalar, refusing dtypes other than booleans and numbers."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"refusing numpy scalar of dtype {dtype!r}")
    if isinstance(data, str):  # Python 2 byte strings decoded as latin1
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"refusing numpy scalar data of {type(data).__name__} (not {dtype.itemsize} bytes)")
    return np.frombuffer(data, dtype=dtype)[0]


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` restricted to what numpy scalar pickles use: a str to latin1 bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1") or errors != "strict":
        raise pickle.UnpicklingError(f"refusing _codecs.encode of {type(text).__name__} as {str(encoding)[:20]!r}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: data pickles may hold only "
                                         "plain containers and numbers")
        if name == "scalar":
            return _numpy_scalar
        if module == "_codecs":
            return _latin1_encode
        if module == "numpy":
            return np.dtype
        return {"set": set, "frozenset": frozenset}[name]


def safe_load(path: str):
    """Load a data pickle (Python 3, or Python 2 with latin1 strings) through the restricted unpickler."""
    # a regular file of at most a 16th of DVAE_MAX_BYTES: unpickled objects take many times the file's size
    data = read_bytes(path, "data pickle", max_bytes() // 16)
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except RecursionError:
        raise DataError(f"{path}: not a loadable data pickle: nested too deeply") from None
    except MemoryError:
        raise DataError(f"{path}: not a loadable data pickle: it asks for more memory than there is") from None
    except Exception as e:  # any malformed stream: truncated, oversized, refused classes, bad opcodes
        raise DataError(f"{path}: not a loadable data pickle: {type(e).__name__}: {str(e)[:200]}") from None
