"""Trajectory data read lazily (dvae.data.lazy): the same sequences as the in-memory loader, read one
row at a time (nothing else), checked when read, and the same training."""

import json
import os

import numpy as np
import pytest
import torch

from dvae.cli import main
from dvae.data import Normalizer, from_trajectories, load_npz, load_source
from dvae.data.batching import batches
from dvae.data.lazy import LazySequences, write_manifest
from dvae.errors import DataError
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model


def arrays(kind, n=11, T=9, seed=0):
    """Trajectory arrays with ragged lengths and padding garbage: kind continuous (with action bounds),
    discrete (integer actions, no num_actions metadata), uncontrolled, or flat (2-D obs, no actions)."""
    g = np.random.default_rng(seed)
    out = {"obs": g.standard_normal((n, T + 1, 3)).astype(np.float32), "lengths": g.integers(0, T + 1, n)}
    for i, L in enumerate(out["lengths"]):
        out["obs"][i, L + 1:] = np.nan  # padding is never read as data
    if kind == "continuous":
        out["actions"] = g.uniform(-2, 2, (n, T, 2)).astype(np.float32)
        out["action_low"], out["action_high"] = np.full(2, -2.0, np.float32), np.full(2, 2.0, np.float32)
        out["env_id"] = np.array("Made-up-v0")
    elif kind == "discrete":
        out["actions"] = g.integers(0, 4, (n, T))
    elif kind == "flat":
        out["obs"] = out["obs"][..., 0]
    return out


def write_shards(d, arr, cuts=(0, 4, 5, None)):
    """Shards of ``arr`` split at ``cuts`` (uncompressed .npz) and a manifest."""
    d.mkdir(exist_ok=True)
    n = len(arr["obs"])
    cuts = [c if c is not None else n for c in cuts]
    shards = []
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        part = {key: (v[a:b] if v.ndim and len(v) == n else v) for key, v in arr.items()}
        np.savez(d / f"s{k}.npz", **part)
        shards.append({"file": f"s{k}.npz", "episodes": b - a})
    write_manifest(str(d), shards)
    return d


def write_npy_dir(d, arr):
    d.mkdir(exist_ok=True)
    for key, v in arr.items():
        np.save(d / f"{key}.npy", v)
    return d


@pytest.mark.parametrize("kind", ["continuous", "discrete", "uncontrolled", "flat"])
@pytest.mark.parametrize("layout", ["shards", "npy"])
def test_lazy_data_are_the_sequences_and_splits_of_the_in_memory_loader(tmp_path, kind, layout):
    arr = arrays(kind)
    eager = from_trajectories(arr["obs"], arr.get("actions"), arr["lengths"], "x",
                              {}, (arr["action_low"], arr["action_high"]) if "action_low" in arr else None)
    path = write_shards(tmp_path / "d", arr) if layout == "shards" else write_npy_dir(tmp_path / "d", arr)
    lazy = load_source(str(path))
    assert isinstance(lazy.xs, LazySequences) and lazy.splits == eager.splits
    assert (lazy.x_dim, lazy.u_dim) == (eager.x_dim, eager.u_dim) and len(lazy.xs) == len(eager.xs)
    assert list(lazy.xs.lengths) == [len(x) for x in eager.xs]
    for i in range(len(eager.xs)):
        assert lazy.xs[i].dtype == np.float32 and np.array_equal(lazy.xs[i], eager.xs[i]), i
        if eager.us is None:
            assert lazy.us is None
        else:
            assert lazy.us[i].dtype == np.float32 and np.array_equal(lazy.us[i], eager.us[i]), i
    for split in ("train", "valid", "test"):
        lx, lu = lazy.subset(split)
        ex, eu = eager.subset(split)
        assert isinstance(lx, LazySequences) and all(np.array_equal(a, b) for a, b in zip(lx, ex))
        assert (lu is None) == (eu is None)


def test_an_epoch_reads_each_sequence_row_once_and_nothing_else(tmp_path, monkeypatch):
    """Opening reads no row; an epoch of batches reads exactly the bytes of the rows of obs and actions
    of its sequences, each once: the data streams from disk."""
    arr = arrays("continuous", n=40, T=12)
    path = write_shards(tmp_path / "d", arr, cuts=(0, 13, 29, None))
    reads = []
    pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, offset: reads.append(n) or pread(fd, n, offset))
    data = load_source(str(path))
    assert reads == []
    xs, us = data.subset("train")
    for _ in batches(xs, us, 8, generator=torch.Generator().manual_seed(0), by_length=True):
        pass
    row = 13 * 3 * 4 + 12 * 2 * 4  # (T+1) x obs_dim float32, T x act_dim float32
    assert len(reads) == 2 * len(xs) and sum(reads) == row * len(xs)


def test_streaming_statistics_equal_those_of_the_concatenated_data(tmp_path):
    arr = arrays("continuous", n=30)
    arr["obs"] = arr["obs"] * 5 + 3
    lazy = load_source(str(write_shards(tmp_path / "d", arr)))
    eager = from_trajectories(arr["obs"], arr["actions"], arr["lengths"])
    a = Normalizer.fit(*lazy.subset("train"))
    b = Normalizer.fit(*eager.subset("train"))
    for f in ("x_mean", "x_std", "u_mean", "u_std"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-12, err_msg=f)
    xs = a.x(lazy.subset("valid")[0])
    assert isinstance(xs, LazySequences)
    assert all(np.array_equal(x, y) for x, y in zip(xs, b.x(eager.subset("valid")[0])))


def test_training_on_lazy_data_equals_training_on_the_same_data_in_memory(tmp_path):
    """The trainer's batches are the same bits; the runs agree to float tolerance (bit equality of two
    CPU training runs in one process is not promised: MKL's kernels may round differently with the
    alignment of the memory they are given)."""
    arr = arrays("continuous", n=24)
    lazy = load_source(str(write_shards(tmp_path / "d", arr)))
    eager = from_trajectories(arr["obs"], arr["actions"], arr["lengths"])
    norm = Normalizer.fit(*eager.subset("train"))
    for epoch in range(2):
        a, b = ([batches(norm.x(d.subset("train")[0]), norm.u(d.subset("train")[1]), 4, by_length=True,
                         generator=torch.Generator().manual_seed(epoch)) for d in (lazy, eager)])
        for p, q in zip(a, b, strict=True):
            assert all((f is None and g is None) or torch.equal(f, g) for f, g in zip(p, q))

    def fit(data):
        torch.manual_seed(0)
        model = build_model(ModelConfig("dmm", x_dim=3, u_dim=2, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
        prep = [(norm.x(data.subset(s)[0]), norm.u(data.subset(s)[1])) for s in ("train", "valid")]
        return Trainer(model, TrainConfig(epochs=2, batch_size=4, patience=0), *prep).fit(progress=False)

    for a, b in zip(fit(lazy), fit(eager), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["valid_neg_elbo_per_step"] == pytest.approx(b["valid_neg_elbo_per_step"], rel=1e-6)


def test_bad_data_is_reported_when_read_naming_the_shard_sequence_and_step(tmp_path):
    arr = arrays("continuous")
    arr["lengths"][:] = 9
    arr["obs"] = np.nan_to_num(arr["obs"])  # no padding now: every step is real
    arr["obs"][6, 3, 1] = np.inf  # shard s2 (sequences 5..10), its row 1
    arr["actions"][2, 4, 0] = 7.0  # outside [-2, 2]; shard s0
    data = load_source(str(write_shards(tmp_path / "d", arr)))
    data.xs[5]
    with pytest.raises(DataError, match=r"s2\.npz: obs has inf \(nan/inf\) at sequence 1, step 3, dim 1"):
        data.xs[6]
    with pytest.raises(DataError, match=r"s0\.npz: actions has 7\.0 outside the action space \[-2\.0, 2\.0\] "
                                        r"at sequence 2, step 4, dim 0"):
        data.us[2]


def test_unreadable_lazy_sources_are_refused_at_open(tmp_path):
    arr = arrays("continuous")
    d = write_shards(tmp_path / "d", arr)
    np.savez_compressed(d / "s1.npz", **{k: (v[4:5] if v.ndim and len(v) == 11 else v) for k, v in arr.items()})
    with pytest.raises(DataError, match=r"s1\.npz: 'obs' is compressed"):
        load_source(str(d))
    d2 = write_shards(tmp_path / "d2", arr)
    m = json.loads((d2 / "manifest.json").read_text())
    m["shards"][0]["episodes"] = 5
    (d2 / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"shards\[0\] lists 5 episodes but .*s0\.npz holds 4"):
        load_source(str(d2))
    d3 = write_shards(tmp_path / "d3", arr)
    raw = open(d3 / "s2.npz", "rb").read()
    open(d3 / "s2.npz", "wb").write(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"s2\.npz"):
        load_source(str(d3))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"without manifest\.json or obs\.npy"):
        load_source(str(tmp_path / "empty"))


@pytest.mark.parametrize("env", ["Pendulum-v1", "CartPole-v1"])
def test_collect_in_shards_gives_the_episodes_of_one_file(tmp_path, capsys, env):
    """`dvae collect --shards 3` collects shard by shard; concatenated, the shards are the one file of
    `dvae collect` with the same seed (CartPole: discrete actions, episodes ending early)."""
    common = ["collect", "--env", env, "--episodes", "7", "--steps", "30", "--seed", "3"]
    assert main(common + ["--out", str(tmp_path / "one.npz")]) == 0
    assert main(common + ["--shards", "3", "--out", str(tmp_path / "sh")]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["shards"] == 3 and out["manifest"].endswith("manifest.json")
    one = np.load(tmp_path / "one.npz")
    manifest = json.loads((tmp_path / "sh" / "manifest.json").read_text())
    parts = [np.load(tmp_path / "sh" / s["file"]) for s in manifest["shards"]]
    assert [s["episodes"] for s in manifest["shards"]] == [len(p["obs"]) for p in parts] and manifest["episodes"] == 7
    for key in ("obs", "actions", "rewards", "terminated", "truncated", "lengths"):
        assert np.array_equal(np.concatenate([p[key] for p in parts]), one[key]), key
    eager, lazy = load_npz(str(tmp_path / "one.npz")), load_source(str(tmp_path / "sh"))
    assert all(np.array_equal(a, b) for a, b in zip(eager.us, lazy.us))
    if env == "CartPole-v1":
        assert one["lengths"].min() < 30  # some episode ended early: ragged data
