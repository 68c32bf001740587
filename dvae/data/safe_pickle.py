"""A restricted unpickler for data files: plain containers and numbers only.

Pickles run code when loaded. ``safe_load`` admits the opcodes that build lists, tuples, dicts,
strings and numbers, and, through ``find_class``, only sets and numpy integer/float scalars (which
Python 2 pickles of numpy data need); anything else is refused before it is constructed.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

from dvae.errors import DataError

_ALLOWED = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


def _numpy_scalar(dtype, data=None):
    """Rebuild a numpy scalar, refusing dtypes other than booleans and numbers."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"refusing numpy scalar of dtype {dtype!r}")
    if isinstance(data, str):  # Python 2 byte strings decoded as latin1
        data = data.encode("latin1")
    return np.frombuffer(data, dtype=dtype)[0]


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: data pickles may hold only "
                                         "plain containers and numbers")
        if name == "scalar":
            return _numpy_scalar
        if module == "numpy":
            return np.dtype
        return {"set": set, "frozenset": frozenset}[name]


def safe_load(path: str):
    """Load a data pickle (Python 3, or Python 2 with latin1 strings) through the restricted unpickler."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except RecursionError:
        raise DataError(f"{path}: not a loadable data pickle: nested too deeply") from None
    except Exception as e:  # any malformed stream: truncated, oversized, refused classes, bad opcodes
        raise DataError(f"{path}: not a loadable data pickle: {type(e).__name__}: {e}") from None
