import os
import pickle

import numpy as np
import pytest
import torch

from dvae.data import Normalizer, collate, load_npz, load_polyphonic, load_source, safe_load, split_indices
from dvae.errors import DataError

POLY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "polyphonic", "Piano-midi.de.pickle")


def test_collate_pads_at_the_end_and_masks():
    b = collate([torch.ones(3, 2), torch.ones(1, 2)], [torch.ones(3, 1), torch.ones(1, 1)]).check()
    assert b.x.shape == (2, 3, 2) and b.u.shape == (2, 3, 1)
    assert b.mask.tolist() == [[True, True, True], [True, False, False]]
    assert b.lengths.tolist() == [3, 1]
    assert b.x[1, 1:].abs().sum() == 0


def test_load_npz_maps_obs_and_actions_to_x_and_u(tmp_path):
    obs = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    act = np.arange(2 * 3, dtype=np.float32).reshape(2, 3, 1)
    np.savez(tmp_path / "t.npz", obs=obs, actions=act)
    d = load_npz(str(tmp_path / "t.npz"))
    assert len(d.xs) == 2 and d.xs[0].shape == (4, 3) and d.us[0].shape == (4, 1)
    np.testing.assert_array_equal(d.us[1][:3, 0], act[1, :, 0])  # u_t = action_t
    assert d.us[1][3, 0] == 0  # no action after the last observation


def test_load_npz_ragged_lengths_and_discrete_actions(tmp_path):
    obs = np.random.default_rng(0).standard_normal((3, 6, 2))
    act = np.array([[0, 1, 2, 0, 1], [2, 2, 0, 0, 0], [1, 0, 0, 0, 0]])
    np.savez(tmp_path / "t.npz", obs=obs, actions=act, lengths=np.array([5, 2, 1]))
    d = load_npz(str(tmp_path / "t.npz"))
    assert [len(x) for x in d.xs] == [6, 3, 2]  # observations = actions + 1
    assert d.u_dim == 3 and d.us[1][:2].tolist() == [[0, 0, 1], [0, 0, 1]]


def test_load_npz_without_actions_is_uncontrolled(tmp_path):
    np.savez(tmp_path / "t.npz", obs=np.zeros((3, 5, 2)))
    d = load_npz(str(tmp_path / "t.npz"))
    assert d.us is None and d.u_dim == 0


@pytest.mark.parametrize("arrays, message", [
    ({"obs": np.where(np.arange(60).reshape(3, 10, 2) == 27, np.nan, 0.0)}, "nan.*sequence 1, step 3, dim 1"),
    ({"obs": np.zeros((2, 5, 1)), "actions": np.zeros((2, 3, 1))}, "actions have 3 steps but obs has 5"),
    ({"obs": np.zeros((2, 5, 1)), "actions": np.zeros((3, 4, 1))}, "actions must have shape"),
    ({"obs": np.zeros((0, 5, 1))}, "empty"),
    ({"obs": np.zeros((2, 5, 1)), "lengths": np.array([4, 9])}, r"lengths\[1\] = 9"),
    ({"actions": np.zeros((2, 4, 1))}, "no 'obs'"),
    ({"obs": np.zeros((2, 5, 1)), "actions": np.full((2, 4, 1), np.inf)}, "actions has inf.*sequence 0, step 0"),
])
def test_load_npz_rejects_bad_input_naming_file_and_place(tmp_path, arrays, message):
    path = str(tmp_path / "bad.npz")
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as e:
        load_npz(path)
    assert path in str(e.value)


def test_load_source_unknown_names_the_source():
    with pytest.raises(DataError, match="no-such.npz: no such file"):
        load_source("no-such.npz")
    with pytest.raises(DataError, match="pendulm: no such file, and no built-in sources given"):
        load_source("pendulm")  # the data layer knows no built-in names
    from envs.sources import load_source as load_any_source

    with pytest.raises(DataError, match=r"pendulm: no such file, and not a built-in source \(pendulum\)"):
        load_any_source("pendulm")


def test_split_indices_is_deterministic_and_disjoint():
    s = split_indices(30)
    assert s == split_indices(30)
    all_idx = s["train"] + s["valid"] + s["test"]
    assert sorted(all_idx) == list(range(30)) and len(s["valid"]) == 3 and len(s["test"]) == 3


def test_normalizer_log_det_moves_density_to_data_units():
    g = np.random.default_rng(0)
    xs = [g.normal([1.0, -2.0], [3.0, 0.5], size=(50, 2)).astype(np.float32) for _ in range(4)]
    n = Normalizer.fit(xs)
    assert np.isclose(n.log_det_per_step, np.log(np.concatenate(xs).std(0)).sum(), rtol=1e-5)
    y = n.x(xs)[0]
    np.testing.assert_allclose(n.x_inverse(y), xs[0], rtol=1e-5, atol=1e-5)


def _write(path, obj, **kw):
    with open(path, "wb") as f:
        pickle.dump(obj, f, **kw)


def test_polyphonic_plain_and_numpy_ints(tmp_path):
    seqs = {"train": [[(60, 64), (), (21,)]], "valid": [[(108,)]], "test": [[(60,)], [(61,), (62,)]]}
    _write(tmp_path / "plain.pickle", seqs, protocol=2)
    np_seqs = {k: [[tuple(np.int64(n) for n in step) for step in s] for s in v] for k, v in seqs.items()}
    _write(tmp_path / "numpy.pickle", np_seqs)
    for name in ("plain", "numpy"):
        d = load_polyphonic(str(tmp_path / f"{name}.pickle"))
        assert d.kind == "binary" and d.x_dim == 88
        assert d.xs[0].shape == (3, 88) and d.xs[0][0].nonzero()[0].tolist() == [39, 43]
        assert d.xs[0][1].sum() == 0 and d.xs[0][2, 0] == 1 and d.xs[1][0, 87] == 1
        assert d.splits == {"train": [0], "valid": [1], "test": [2, 3]}


def test_polyphonic_python2_latin1_pickle(tmp_path):
    # Python 2's pickle of {'train': [[(60,)]], 'valid': [[(61,)]], 'test': [[(62,)]]}: str keys as byte strings
    def seq(note):
        return b"]q\x00]q\x00K" + bytes([note]) + b"\x85q\x00aa"
    body = b"\x80\x02}q\x00(" + b"".join(b"U" + bytes([len(k)]) + k + seq(n)
                                         for k, n in ((b"train", 60), (b"valid", 61), (b"test", 62))) + b"u."
    (tmp_path / "py2.pickle").write_bytes(body)
    d = load_polyphonic(str(tmp_path / "py2.pickle"))
    assert [x.nonzero()[1].tolist() for x in d.xs] == [[39], [40], [41]]


def test_polyphonic_note_out_of_range_names_place(tmp_path):
    _write(tmp_path / "bad.pickle", {"train": [[(60,), (130,)]], "valid": [], "test": []})
    with pytest.raises(DataError, match="train sequence 0, step 1: note 130"):
        load_polyphonic(str(tmp_path / "bad.pickle"))


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_restricted_unpickler_refuses_code_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    _write(tmp_path / "evil.pickle", {"train": [_Evil(marker)], "valid": [], "test": []})
    with pytest.raises(DataError, match="refusing to load"):
        safe_load(str(tmp_path / "evil.pickle"))
    assert not marker.exists()


@pytest.mark.skipif(not os.path.exists(POLY), reason="shared polyphonic data not present")
def test_piano_midi_counts_match_provenance():
    d = load_polyphonic(POLY)
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 87, "valid": 12, "test": 25}
    assert sum(len(d.xs[i]) for i in d.splits["train"]) == 75911
    assert sum(len(d.xs[i]) for i in d.splits["test"]) == 19036
