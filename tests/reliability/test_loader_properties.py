"""Property-based tests of the loaders on generated files: they either load consistent data or raise
DataError (never another exception), and what they load matches what was written."""

import pickle

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dvae.data import load_npz, load_polyphonic
from dvae.errors import DataError

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def trajectory_files(draw):
    n = draw(st.integers(0, 4))
    t1 = draw(st.integers(0, 6))
    dim = draw(st.integers(1, 3))
    floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
    arrays = {"obs": draw(hnp.arrays(np.float32, (n, t1, dim), elements=floats))}
    kind = draw(st.sampled_from(["none", "float", "int", "bad-length"]))
    t = max(t1 - 1, 0)
    if kind == "float":
        arrays["actions"] = draw(hnp.arrays(np.float32, (n, t, 1), elements=floats))
    elif kind == "int":
        arrays["actions"] = draw(hnp.arrays(np.int64, (n, t), elements=st.integers(-1, 3)))
    elif kind == "bad-length":
        arrays["actions"] = np.zeros((n, t1 + 1, 1), np.float32)
    if draw(st.booleans()):
        arrays["lengths"] = draw(hnp.arrays(np.int64, (n,), elements=st.integers(-1, t1)))
    return arrays


@SETTINGS
@given(arrays=trajectory_files())
def test_load_npz_loads_consistent_data_or_raises_data_error(tmp_path, arrays):
    path = str(tmp_path / "gen.npz")
    np.savez(path, **arrays)
    try:
        data = load_npz(path)
    except DataError as e:
        assert str(e).startswith(path) and "\n" not in str(e)
        return
    obs = arrays["obs"]
    lengths = arrays.get("lengths", np.full(len(obs), obs.shape[1] - 1))
    assert len(data.xs) == len(obs)
    for i, x in enumerate(data.xs):
        assert x.shape == (lengths[i] + 1, obs.shape[2]) and np.isfinite(x).all()
        np.testing.assert_array_equal(x, obs[i, : lengths[i] + 1])
        if data.us is not None:
            assert data.us[i].shape[0] == x.shape[0] and np.isfinite(data.us[i]).all()
    parts = sum(data.splits.values(), [])
    if len(obs) >= 3:  # a partition of the sequences
        assert sorted(parts) == list(range(len(obs)))
    else:  # too few to hold any out: every split holds every sequence
        assert all(v == list(range(len(obs))) for v in data.splits.values())


notes = st.one_of(st.integers(0, 130), st.floats(0, 130, allow_nan=False), st.text(max_size=2))
sequences = st.lists(st.lists(st.tuples(notes) | st.tuples(), max_size=4), max_size=3)


@SETTINGS
@given(obj=st.one_of(st.fixed_dictionaries({"train": sequences, "valid": sequences, "test": sequences}),
                     st.dictionaries(st.text(max_size=5), sequences, max_size=3), st.lists(st.integers(), max_size=3)))
def test_load_polyphonic_loads_piano_rolls_or_raises_data_error(tmp_path, obj):
    path = str(tmp_path / "gen.pickle")
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    try:
        data = load_polyphonic(path)
    except DataError as e:
        assert str(e).startswith(path) and "\n" not in str(e)
        return
    seqs = obj["train"] + obj["valid"] + obj["test"]
    assert len(data.xs) == len(seqs)
    for x, seq in zip(data.xs, seqs):
        assert x.shape == (len(seq), 88)
        for t, step in enumerate(seq):
            assert sorted(np.flatnonzero(x[t]) + 21) == sorted({int(n) for n in step})


@SETTINGS
@given(blob=st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_other_errors(tmp_path, blob):
    for name, loader in (("b.npz", load_npz), ("b.pickle", load_polyphonic)):
        path = tmp_path / name
        path.write_bytes(blob)
        try:
            loader(str(path))
        except DataError:
            pass


DTYPES = ["float64", "float32", "float16", "int8", "int64", "uint16", "bool", "complex64", "U3", "S2",
          "datetime64[s]", "timedelta64[ms]"]


@st.composite
def typed_trajectory_files(draw):
    """Trajectory files of any dtype, float64 values anywhere in its range (beyond float32's too)."""
    n, t1 = draw(st.integers(1, 3)), draw(st.integers(2, 4))
    arrays = {}
    for name, shape in (("obs", (n, t1, 2)), ("actions", (n, t1 - 1, 1))):
        dtype = draw(st.sampled_from(DTYPES))
        if dtype == "float64":
            elements = st.floats(allow_nan=False, allow_infinity=False, width=64)
            arrays[name] = draw(hnp.arrays(np.float64, shape, elements=elements))
        elif np.dtype(dtype).kind in "US":
            arrays[name] = np.full(shape, "1", dtype=dtype)
        else:
            arrays[name] = np.ones(shape, dtype=dtype)
    return arrays


@SETTINGS
@given(arrays=typed_trajectory_files())
def test_loaded_data_is_finite_float32_equal_to_the_file_or_refused(tmp_path, arrays):
    """Only real numbers (bool, integers, floats) load; a float64 beyond float32's range is refused, not
    turned into inf; what loads equals the file's values cast to float32, finite."""
    path = str(tmp_path / "typed.npz")
    np.savez(path, **arrays)
    try:
        data = load_npz(path)
    except DataError as e:
        assert str(e).startswith(path) and "\n" not in str(e)
        kinds = {arrays[k].dtype.kind for k in ("obs", "actions")}
        beyond = any(a.dtype == np.float64 and (np.abs(a) > np.finfo(np.float32).max).any() for a in arrays.values())
        assert not kinds <= set("biuf") or beyond, str(e)  # refused only for a reason
        return
    for name in ("obs", "actions"):
        assert arrays[name].dtype.kind in "biuf"
    for i, x in enumerate(data.xs):
        assert x.dtype == np.float32 and np.isfinite(x).all()
        np.testing.assert_array_equal(x, arrays["obs"][i].astype(np.float32))
        np.testing.assert_array_equal(data.us[i][:-1], arrays["actions"][i].astype(np.float32))


@SETTINGS
@given(shape=st.lists(st.integers(0, 2 ** 40), min_size=1, max_size=4), descr=st.sampled_from(["<f4", "<f8", "|u1", "<i8"]))
def test_a_declared_array_size_is_checked_before_anything_is_read(tmp_path, shape, descr):
    """An .npz whose obs header declares any shape, followed by a few bytes: refused in one DataError
    (over the size limit, or truncated) without allocating what the header declares."""
    import zipfile

    from dvae.inputs import declared_nbytes, max_bytes

    text = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (descr, tuple(shape))
    pad = 64 - (10 + len(text) + 1) % 64
    header = b"\x93NUMPY\x01\x00" + len(text + " " * pad + "\n").to_bytes(2, "little") + (text + " " * pad + "\n").encode()
    path = str(tmp_path / "declared.npz")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("obs.npy", header + bytes(64))
    try:
        load_npz(path)
    except DataError as e:
        assert str(e).startswith(path) and "\n" not in str(e)
        if declared_nbytes(shape, np.dtype(descr)) > max_bytes():
            assert "over the limit" in str(e)
