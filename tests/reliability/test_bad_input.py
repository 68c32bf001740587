"""Every bad input of the reliability contract, in one table: a non-zero exit, one line on stderr that
names the file and the place, no traceback, nothing run from a data file."""

import json
import os
import pickle
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from dvae.cli import main

TINY = ["--epochs", "1", "--z-dim", "2", "--rnn-dim", "8", "--transition-dim", "8", "--emission-dim", "8",
        "--batch-size", "8", "--seed", "0", "--no-progress"]


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A directory with good data and a trained tiny run in it."""
    d = tmp_path_factory.mktemp("rel")
    g = np.random.default_rng(0)
    obs = g.standard_normal((10, 9, 2)).astype(np.float32)
    act = g.uniform(-1, 1, (10, 8, 1)).astype(np.float32)
    np.savez(d / "good.npz", obs=obs, actions=act, action_low=np.array([-1.0], np.float32),
             action_high=np.array([1.0], np.float32))
    assert main(["train", "--data", str(d / "good.npz"), *TINY, "--out", str(d / "run")]) == 0
    return d


def _npz(name, **arrays):
    def make(d):
        np.savez(d / name, **arrays)
        return str(d / name)
    return make


def _file(name, content):
    def make(d):
        (d / name).write_bytes(content)
        return str(d / name)
    return make


def _pickle(name, obj):
    def make(d):
        with open(d / name, "wb") as f:
            pickle.dump(obj, f)
        return str(d / name)
    return make


def _run_with_config(name, edit):
    def make(d):
        import shutil
        run = d / name
        shutil.copytree(d / "run", run, dirs_exist_ok=True)
        cfg = json.load(open(run / "config.json"))
        text = edit(cfg)
        if isinstance(text, bytes):
            (run / "config.json").write_bytes(text)
        elif text is Ellipsis:  # config.json replaced by a directory
            os.remove(run / "config.json")
            os.mkdir(run / "config.json")
        else:
            (run / "config.json").write_text(text if isinstance(text, str) else json.dumps(cfg))
        return str(run)
    return make


def _run_with_checkpoint(name, obj):
    def make(d):
        import shutil
        run = d / name
        shutil.copytree(d / "run", run, dirs_exist_ok=True)
        os.remove(run / "best.pt")
        with open(run / "checkpoint.pt", "wb") as f:
            content = obj(d) if callable(obj) else obj
            f.write(content) if isinstance(content, bytes) else pickle.dump(content, f)
        return str(run)
    return make


class _Raw(bytes):
    """Bytes that _run_with_checkpoint writes as they are (not pickled)."""


def _torch_zip(data_pkl: bytes) -> "_Raw":
    """A checkpoint in torch's zip format (the members torch.save writes) whose data.pkl is ``data_pkl``."""
    import io
    import zipfile

    buf, out = io.BytesIO(), io.BytesIO()
    torch.save({}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z, zipfile.ZipFile(out, "w") as w:
        for info in z.infolist():
            w.writestr(info.filename, data_pkl if info.filename.endswith("data.pkl") else z.read(info.filename))
    return _Raw(out.getvalue())


def _run_with_legacy_checkpoint(d):
    """A copy of the run whose best.pt is the same parameters saved in torch's legacy (non-zip) format."""
    import shutil
    run = d / "legacy"
    shutil.copytree(d / "run", run, dirs_exist_ok=True)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    torch.save(ckpt, run / "best.pt", _use_new_zipfile_serialization=False)
    return str(run)


def _run_with_edited_checkpoint(name, edit, file="checkpoint.pt"):
    """A copy of the trained run whose ``file`` is the good one after ``edit(ckpt)`` (in place), or, where
    ``edit`` is not callable, ``edit`` itself."""
    def make(d):
        import shutil

        import torch
        run = d / name
        shutil.copytree(d / "run", run, dirs_exist_ok=True)
        ckpt = torch.load(run / file, weights_only=True)
        if callable(edit):
            edit(ckpt)
        else:
            ckpt = edit
        torch.save(ckpt, run / file)
        return str(run)
    return make


def _ckpt_set(path, value):
    """An edit setting ckpt[path[0]][path[1]]... = value."""
    def edit(ckpt):
        target = ckpt
        for key in path[:-1]:
            target = target[key] if not callable(key) else key(target)
        target[path[-1]] = value
    return edit


def _best_pt_as_checkpoint(d):
    import shutil
    run = d / "bestpt"
    shutil.copytree(d / "run", run, dirs_exist_ok=True)
    shutil.copy(run / "best.pt", run / "checkpoint.pt")
    return str(run)


def _first_optim_entry(ckpt):
    return next(iter(ckpt["optim"].values()))["state"][0]


def _nonrun_dir(d):
    (d / "notrun").mkdir(exist_ok=True)
    (d / "notrun" / "notes.txt").write_text("mine")
    return str(d / "notrun")


def _changed_data_run(d):
    import shutil
    shutil.copy(d / "good.npz", d / "moving.npz")
    run = d / "run-moving"
    if not run.exists():
        assert main(["train", "--data", str(d / "moving.npz"), *TINY, "--no-plots", "--out", str(run)]) == 0
    np.savez(d / "moving.npz", obs=np.zeros((10, 9, 2), np.float32), actions=np.zeros((10, 8, 1), np.float32))
    return str(run)


def _set(section, key, value):
    def edit(cfg):
        cfg[section][key] = value
    return edit


nan_obs = np.zeros((3, 5, 2))
nan_obs[2, 4, 0] = np.nan
inf_act = np.zeros((3, 4, 1))
inf_act[1, 2, 0] = -np.inf
big_act = np.zeros((3, 4, 1))
big_act[0, 3, 0] = 2.5

huge_obs = np.zeros((3, 5, 2))
huge_obs[1, 2, 0] = 1e300
huge_act = np.zeros((3, 4, 1))
huge_act[2, 0, 0] = -1e39

CASES = [
    # (id, make(dir) -> path, argv with {path}, regex the message must match)
    ("nan in obs", _npz("nan.npz", obs=nan_obs), ["train", "--data", "{path}"], r"nan.npz: obs has nan.*sequence 2, step 4, dim 0"),
    ("inf in actions", _npz("inf.npz", obs=np.zeros((3, 5, 2)), actions=inf_act), ["train", "--data", "{path}"],
     r"inf.npz: actions has -inf.*sequence 1, step 2, dim 0"),
    ("x and u of mismatched lengths", _npz("len.npz", obs=np.zeros((3, 5, 2)), actions=np.zeros((3, 5, 1))),
     ["train", "--data", "{path}"], r"len.npz: actions have 5 steps but obs has 5"),
    ("x and u of mismatched counts", _npz("cnt.npz", obs=np.zeros((3, 5, 2)), actions=np.zeros((2, 4, 1))),
     ["train", "--data", "{path}"], r"cnt.npz: actions must have shape"),
    ("data of other dims than the run", _npz("dims.npz", obs=np.zeros((3, 9, 5)), actions=np.zeros((3, 8, 1))),
     ["eval", "{run}", "--data", "{path}"], r"dims.npz: x_dim 5, u_dim 1 do not match"),
    ("empty dataset", _npz("empty.npz", obs=np.zeros((0, 5, 2))), ["train", "--data", "{path}"], r"empty.npz: obs is empty"),
    ("zero-length sequences", _npz("zero.npz", obs=np.zeros((3, 0, 2))), ["train", "--data", "{path}"], r"zero.npz: obs is empty"),
    ("lengths beyond the array", _npz("lens.npz", obs=np.zeros((3, 5, 2)), lengths=np.array([4, 4, 7])),
     ["train", "--data", "{path}"], r"lens.npz: lengths\[2\] = 7 is outside 0..4"),
    ("shorter than context plus horizon", _npz("short.npz", obs=np.zeros((4, 5, 2)), actions=np.zeros((4, 4, 1))),
     ["eval", "{run}", "--data", "{path}", "--split", "all", "--context", "3", "--horizon", "4"],
     r"short.npz: split all: no sequence long enough.*longest length 5 < context\+horizon 7"),
    ("unknown env id", lambda d: "NoSuchEnv-v9", ["collect", "--env", "{path}", "--episodes", "1", "--steps", "2", "--out", "{dir}/o.npz"],
     r"unknown Gymnasium env id 'NoSuchEnv-v9'"),
    ("action outside the action space", _npz("act.npz", obs=np.zeros((3, 5, 2)), actions=big_act,
                                             action_low=np.array([-2.0]), action_high=np.array([2.0])),
     ["train", "--data", "{path}"], r"act.npz: actions has 2.5 outside the action space \[-2.0, 2.0\] at sequence 0, step 3, dim 0"),
    ("discrete action out of range", _npz("disc.npz", obs=np.zeros((3, 5, 2)), actions=np.array([[0, 1, 2, 1]] * 2 + [[0, 5, 0, 0]]),
                                          num_actions=np.array(3)),
     ["train", "--data", "{path}"], r"disc.npz: actions has 5 outside 0..2 at sequence 2, step 1"),
    ("note number out of range", _pickle("notes.pickle", {"train": [[(60,), (20,)]], "valid": [[(60,)]], "test": [[(60,)]]}),
     ["train", "--data", "{path}"], r"notes.pickle: train sequence 0, step 1: note 20 outside 21..108"),
    ("empty polyphonic sequence", _pickle("emptyseq.pickle", {"train": [[(60,)]], "valid": [[]], "test": [[(60,)]]}),
     ["train", "--data", "{path}"], r"emptyseq.pickle: valid sequence 0 has no time steps"),
    ("not an npz", _file("garbage.npz", b"not a zip file"), ["train", "--data", "{path}"], r"garbage.npz: not a readable .npz"),
    ("missing data file", lambda d: str(d / "absent.npz"), ["train", "--data", "{path}"], r"absent.npz: no such file"),
    ("missing run directory", lambda d: str(d / "no-run"), ["eval", "{path}"], r"no-run: no such run directory"),
    ("checkpoint of another configuration", _run_with_config("zdim", _set("model", "z_dim", 7)), ["eval", "{path}"],
     r"best.pt: does not match the model in config.json"),
    ("config.json not JSON", _run_with_config("nojson", lambda cfg: "{oops"), ["eval", "{path}"], r"config.json: not valid JSON"),
    ("config.json unknown key", _run_with_config("unk", _set("train", "learning_rate", 1)), ["eval", "{path}"],
     r"config.json: unknown keys \['learning_rate'\] in the train section"),
    ("config.json wrong type", _run_with_config("type", _set("model", "z_dim", "four")), ["eval", "{path}"],
     r"config.json: model.z_dim = 'four' is not of type int"),
    ("config.json bad value", _run_with_config("value", _set("model", "rnn_type", "transformer")), ["eval", "{path}"],
     r"config.json: model.rnn_type = 'transformer': expected gru, lstm or rnn"),
    ("config.json negative size", _run_with_config("neg", _set("model", "rnn_dim", -3)), ["eval", "{path}"],
     r"config.json: model.rnn_dim = -3: expected >= 1"),
    ("config.json bad normaliser", _run_with_config("norm", _set("normalizer", "x_std", [1.0, -1.0])), ["eval", "{path}"],
     r"config.json: normalizer.x_std must be positive"),
    ("checkpoint that is not a checkpoint", _run_with_checkpoint("garbage", b"\x00\x01garbage"), ["eval", "{path}"],
     r"checkpoint.pt: not a checkpoint in torch's zip format"),
    ("checkpoint that would run code", _run_with_checkpoint("evil", lambda d: _Evil(d / "pwned-ckpt")), ["eval", "{path}"],
     r"checkpoint.pt: not a checkpoint in torch's zip format"),
    ("checkpoint in torch's zip format that would run code",
     _run_with_checkpoint("evilzip", lambda d: _torch_zip(pickle.dumps(_Evil(d / "pwned-ckpt"), protocol=2))),
     ["eval", "{path}"], r"checkpoint.pt: not a loadable checkpoint \(UnpicklingError"),
    ("checkpoint in torch's legacy format (storage sizes believed)", _run_with_legacy_checkpoint, ["eval", "{path}"],
     r"legacy/best.pt: not a checkpoint in torch's zip format"),

    ("negative learning rate", lambda d: "pendulum", ["train", "--data", "{path}", "--lr", "-1"],
     r"--lr = -1.0: expected a positive number"),
    ("learning-rate decay of 0", lambda d: "pendulum", ["train", "--data", "{path}", "--optimizer", "clipped_adam",
                                                        "--lr-decay", "0"], r"--lr-decay = 0.0: expected in \(0, 1\]"),
    ("learning-rate decay without clipped_adam", lambda d: "pendulum", ["train", "--data", "{path}", "--lr-decay", "0.99"],
     r"--lr-decay = 0.99: expected 1 unless the optimizer is clipped_adam"),
    ("pickle that would run code", _pickle("evil.pickle", {"train": [_Evil("/tmp/dvae-pwned-data")], "valid": [], "test": []}),
     ["train", "--data", "{path}"], r"evil.pickle: .*refusing to load posix.system"),
    # run directories (issue 16, items 2-4 and 6-7)
    ("a non-empty --out that is not a run", _nonrun_dir, ["train", "--data", "{dir}/good.npz", "--out", "{path}"],
     r"notrun: not empty and not a run directory"),
    ("the run's data changed since training", _changed_data_run, ["eval", "{path}"],
     r"moving.npz: the run's data changed since training.*pass --data"),
    ("a seed out of range", lambda d: "x", ["eval", "{run}", "--seed", "-1"], r"--seed = -1: expected in 0..4294967295"),
    ("resume with a model flag", lambda d: str(d / "run"), ["train", "--resume", "{path}", "--model", "vrnn"],
     r"--resume continues .*: --model cannot change it"),
    ("resume with negative epochs", lambda d: str(d / "run"), ["train", "--resume", "{path}", "--epochs", "-5"],
     r"--epochs = -5: expected >= 1"),
    ("zero-byte checkpoint", _run_with_checkpoint("empty", b""), ["eval", "{path}"], r"checkpoint.pt: empty file \(0 bytes\)"),
    ("best.pt in place of checkpoint.pt", _best_pt_as_checkpoint, ["train", "--resume", "{path}"],
     r"bestpt/checkpoint.pt: optim: missing \(this is a best.pt"),
    ("checkpoint: not a dictionary", _run_with_edited_checkpoint("ck-list", [1, 2]), ["train", "--resume", "{path}"],
     r"checkpoint.pt: \(top level\): a list, not a checkpoint's dictionary"),
    ("checkpoint: negative epoch", _run_with_edited_checkpoint("ck-epoch", _ckpt_set(["state", "epoch"], -1)),
     ["train", "--resume", "{path}"], r"checkpoint.pt: state.epoch: -1 is below 0"),
    ("checkpoint: string lr scale", _run_with_edited_checkpoint("ck-lr", _ckpt_set(["state", "lr_scale"], "x")),
     ["train", "--resume", "{path}"], r"checkpoint.pt: state.lr_scale: 'x' is not a number"),
    ("checkpoint: zero lr scale", _run_with_edited_checkpoint("ck-lr0", _ckpt_set(["state", "lr_scale"], 0.0)),
     ["train", "--resume", "{path}"], r"checkpoint.pt: state.lr_scale: 0.0 is out of range"),
    ("checkpoint: batch position beyond the epoch",
     _run_with_edited_checkpoint("ck-batch", _ckpt_set(["state", "batch_in_epoch"], 10 ** 6)),
     ["train", "--resume", "{path}"], r"checkpoint.pt: state.batch_in_epoch: 1000000 is not below the 1 batches"),
    ("checkpoint: metrics rows of other epochs", _run_with_edited_checkpoint("ck-rows", _ckpt_set(["rows"], [])),
     ["train", "--resume", "{path}"], r"checkpoint.pt: rows: 0 rows for state.epoch = 1"),
    ("checkpoint: truncated RNG state",
     _run_with_edited_checkpoint("ck-rng", lambda c: c.update(rng=c["rng"][:100])),
     ["train", "--resume", "{path}"], r"checkpoint.pt: rng: 100 bytes"),
    ("checkpoint: RNG state of another type",
     _run_with_edited_checkpoint("ck-rng-type", lambda c: c.update(rng=c["rng"].float())),
     ["train", "--resume", "{path}"], r"checkpoint.pt: rng: expected a generator state \(a 1-D uint8 tensor\)"),
    ("checkpoint: a CUDA RNG state list holding a string",
     _run_with_edited_checkpoint("ck-rng-cuda", lambda c: c.update(rng_cuda=["no"])),
     ["train", "--resume", "{path}"], r"checkpoint.pt: rng_cuda\[0\]: expected a generator state"),
    ("checkpoint: optimiser state of the wrong shape",
     _run_with_edited_checkpoint("ck-optim", _ckpt_set([_first_optim_entry, "exp_avg"], torch.zeros(7))),
     ["train", "--resume", "{path}"], r"checkpoint.pt: optim\[.*\]\.state\[0\]\.exp_avg"),
    ("checkpoint: optimiser state not a dictionary", _run_with_edited_checkpoint("ck-optim2", _ckpt_set(["optim"], [1])),
     ["train", "--resume", "{path}"], r"checkpoint.pt: optim: a list, not the optimiser state's dictionary"),
    ("best.pt: non-finite parameters",
     _run_with_edited_checkpoint("ck-nan", lambda c: next(iter(c["model"].values())).fill_(float("nan")), "best.pt"),
     ["eval", "{path}"], r"best.pt: model\['.*'\]: has non-finite values"),
    ("impute on a run trained without --missing nan", _npz("gappy.npz", obs=nan_obs, actions=np.zeros((3, 4, 1))),
     ["impute", "{run}", "--data", "{path}", "--out", "{dir}/filled.npz"],
     r"trained without missing='nan' \(the command line's --missing nan\)"),
    # values and types (issue 16, item 10): checked after the cast, real numbers only
    ("float64 beyond float32's range", _npz("huge.npz", obs=huge_obs), ["train", "--data", "{path}"],
     r"huge.npz: obs has 1e\+300 at sequence 1, step 2, dim 0: beyond float32's range"),
    ("float64 actions beyond float32's range", _npz("hugeact.npz", obs=np.zeros((3, 5, 2)), actions=huge_act),
     ["train", "--data", "{path}"], r"hugeact.npz: actions has -1e\+39 at sequence 2, step 0, dim 0: beyond float32"),
    ("complex actions", _npz("cplx.npz", obs=np.zeros((3, 5, 2)), actions=np.ones((3, 4, 1)) * (1 + 2j)),
     ["train", "--data", "{path}"], r"cplx.npz: actions must be a real numeric array, got dtype complex128"),
    ("string actions", _npz("stract.npz", obs=np.zeros((3, 5, 2)), actions=np.full((3, 4, 1), "1.5")),
     ["train", "--data", "{path}"], r"stract.npz: actions must be a real numeric array, got dtype <U3"),
    ("datetime actions", _npz("dtact.npz", obs=np.zeros((3, 5, 2)),
                              actions=np.full((3, 4), np.datetime64("2020-01-01"))),
     ["train", "--data", "{path}"], r"dtact.npz: actions must be a real numeric array, got dtype datetime64"),
    ("string observations", _npz("strobs.npz", obs=np.full((3, 5, 2), "0.5")),
     ["train", "--data", "{path}"], r"strobs.npz: obs must be a real numeric array, got dtype <U3"),
    ("complex conditions", _npz("cplxc.npz", obs=np.zeros((3, 5, 2)), cond=np.ones((3, 2)) * 1j),
     ["train", "--data", "{path}"], r"cplxc.npz: cond must be a real array"),
    ("string action bounds", _npz("strb.npz", obs=np.zeros((3, 5, 2)), actions=np.zeros((3, 4, 1)),
                                  action_low=np.array(["-1"]), action_high=np.array(["1"])),
     ["train", "--data", "{path}"], r"strb.npz: action_low must be a real numeric array"),
    ("non-numeric num_actions", _npz("numact.npz", obs=np.zeros((3, 5, 2)), actions=np.zeros((3, 4), np.int64),
                                     num_actions=np.array("three")),
     ["train", "--data", "{path}"], r"numact.npz: num_actions = 'three': expected a positive integer"),
    ("fractional num_labels", _npz("numlab.npz", obs=np.zeros((3, 5, 2)), labels=np.array([0, 1, 0]),
                                   num_labels=np.array(2.5)),
     ["train", "--data", "{path}", "--model", "vrae", "--condition"], r"numlab.npz: num_labels = '2.5': expected a positive"),
    # config.json: every field range-checked, read as bounded strict UTF-8 JSON (items 8, 9 and minor)
    ("config.json eval_batch_size 0", _run_with_config("ebs0", _set("train", "eval_batch_size", 0)), ["eval", "{path}"],
     r"config.json: train.eval_batch_size = 0: expected >= 1"),
    ("config.json eval_batch_size -1", _run_with_config("ebsm1", _set("train", "eval_batch_size", -1)), ["eval", "{path}"],
     r"config.json: train.eval_batch_size = -1: expected >= 1"),
    ("config.json huge z_dim", _run_with_config("zbig", _set("model", "z_dim", 10 ** 9)), ["eval", "{path}"],
     r"config.json: model.z_dim = 1000000000: expected <= 16777216"),
    ("config.json z_dim over the size limit", _run_with_config("zmid", _set("model", "z_dim", 10 ** 6)), ["eval", "{path}"],
     r"config.json: model sizes \(z_dim 1000000, .*parameters.*over the size limit"),
    ("config.json many flows", _run_with_config("iafs", lambda cfg: cfg["model"].update(guide="iaf", num_iafs=10 ** 6)),
     ["eval", "{path}"], r"config.json: model.num_iafs = 1000000: expected <= 64"),
    ("config.json negative patience", _run_with_config("pat", _set("train", "patience", -1)), ["eval", "{path}"],
     r"config.json: train.patience = -1: expected >= 0"),
    ("config.json zero clip norm sign", _run_with_config("clip", _set("train", "clip_norm", -2.0)), ["eval", "{path}"],
     r"config.json: train.clip_norm = -2.0: expected a number >= 0"),
    ("config.json NaN", _run_with_config("nanjson", lambda cfg: json.dumps(cfg).replace('"time_limit": null',
                                                                                       '"time_limit": NaN')),
     ["eval", "{path}"], r"config.json: not valid JSON \(NaN is not a JSON number\)"),
    ("config.json nested too deeply", _run_with_config("deep", lambda cfg: "[" * 200000 + "]" * 200000), ["eval", "{path}"],
     r"config.json: not valid JSON \(nested too deeply\)"),
    ("config.json not UTF-8", _run_with_config("latin", lambda cfg: "\xff{}".encode("latin1")), ["eval", "{path}"],
     r"config.json: not UTF-8 text \(byte 0\)"),
    ("config.json a directory", _run_with_config("cfgdir", lambda cfg: ...), ["eval", "{path}"],
     r"config.json: a directory, not a regular config.json"),
    # flags: sizes and the field a bad value belongs to
    ("--patience -1", lambda d: "pendulum", ["train", "--data", "{path}", "--patience", "-1"],
     r"--patience = -1: expected >= 0"),
    # JSON output: never NaN or Infinity
    ("eval overflowing to infinity", _npz("overflow.npz", obs=np.full((4, 9, 2), 3e38, np.float32),
                                          actions=np.zeros((4, 8, 1), np.float32)),
     ["eval", "{run}", "--data", "{path}", "--split", "all"], r"neg_elbo_per_step is not a finite number"),
    # error lines are capped
    ("a very long path", lambda d: "x/" * 400 + "absent.npz", ["train", "--data", "{path}"], r"^dvae train: error: x/x/.*[.][.][.]$"),
]


# --- memory-bound and blocking inputs (issue 16, items 8 and 9) ---------------------------------------
# Each runs in one subprocess under an address-space limit (RLIMIT_AS, 3 GiB: torch and one model fit, a
# declared terabyte does not) and a timeout, so that a regression fails the test (an "out of memory"
# line, or the timeout) instead of exhausting the machine or blocking the suite.
MEMORY_LIMIT = 3 * 2 ** 30


def _npy_header(shape, descr="<f4") -> bytes:
    """A version 1.0 .npy header declaring ``shape``: 64-byte aligned, as numpy writes it."""
    text = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (descr, tuple(shape))
    pad = 64 - (10 + len(text) + 1) % 64
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text) + pad + 1) + text.encode() + b" " * pad + b"\n"


def _write_zip(path, members):
    """A zip archive of ``members``: (name, method, crc, compressed bytes, uncompressed size), written by
    hand so that a deflated member can be a zip bomb that was never inflated here."""
    out, central = bytearray(), bytearray()
    for name, method, crc, data, size in members:
        name = name.encode()
        offset = len(out)
        out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size, len(name), 0)
        out += name + data
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data), size,
                               len(name), 0, 0, 0, 0, 0, offset) + name
    out += central + struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                                 len(out), 0)
    with open(path, "wb") as f:
        f.write(bytes(out))


def _bomb(d, shape=(3, 2 ** 15, 2 ** 12)):
    """obs.npy deflated: a true header of ``shape`` float32 (1.5 GiB) and that many zero bytes, about
    1.5 MB compressed. Each 16 MiB of zeros after a full flush compresses to the same bytes, so one
    block is compressed and repeated."""
    header, chunk = _npy_header(shape), 1 << 24
    n = 4 * int(np.prod(shape))
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    data = head + block * (n // chunk) + c.flush()
    crc = zlib.crc32(header)
    zeros = bytes(chunk)
    for _ in range(n // chunk):
        crc = zlib.crc32(zeros, crc)
    _write_zip(d / "bomb.npz", [("obs.npy", 8, crc, data, len(header) + n)])
    return str(d / "bomb.npz")


def _terabyte_header(d):
    """obs.npy stored: a header declaring (10^6, 10^6, 2) float64 (16 TB), followed by 16 bytes."""
    body = _npy_header((10 ** 6, 10 ** 6, 2), "<f8") + bytes(16)
    _write_zip(d / "tera.npz", [("obs.npy", 0, zlib.crc32(body), body, len(body))])
    return str(d / "tera.npz")


def _memo_pickle(d):
    """2 MB or less on disk: one sequence of 20,000 steps referenced 5,000 times (pickle memo), 10^8 steps
    of 88 keys (35 GB) once unrolled into piano rolls."""
    seq = [(60,)] * 20000
    with open(d / "memo.pickle", "wb") as f:
        pickle.dump({"train": [seq] * 5000, "valid": [seq], "test": [seq]}, f)
    assert os.path.getsize(d / "memo.pickle") < 2e6
    return str(d / "memo.pickle")


def _distinct_words(d):
    """One 400 KB line of 60,000 distinct words: one-hot, 60,001 x 60,002 floats (13 GiB)."""
    (d / "words.txt").write_text(" ".join(f"w{i:05d}" for i in range(60000)) + "\n")
    return str(d / "words.txt")


def _fifo(name):
    def make(d):
        path = d / name
        if not path.exists():
            os.mkfifo(path)
        return str(path)
    return make


def _link_to_dev_zero(name):
    def make(d):
        path = d / name
        if not os.path.lexists(path):
            os.symlink("/dev/zero", path)
        return str(path)
    return make


def _run_with_special_config(name, special):
    def make(d):
        import shutil
        run = d / name
        if not run.exists():
            shutil.copytree(d / "run", run)
            os.remove(run / "config.json")
            special(str(run / "config.json"))
        return str(run)
    return make


def _ragged_csv(d):
    """1.4 MB of CSV: 100,000 episodes of one row and one of 100,000 rows, padded to a (100001, 100000, 1)
    float64 table (74.5 GiB)."""
    path = d / "ragged.csv"
    if not path.exists():
        path.write_text("episode,x\n" + "".join(f"{i},0\n" for i in range(100000)) + "big,0\n" * 100000)
    return str(path)


def _tera_npy(d):
    """A 128-byte .npy whose header declares (10^5, 10^5, 100) float32 (3.6 TiB)."""
    (d / "tera.npy").write_bytes(_npy_header((10 ** 5, 10 ** 5, 100), "<f4") + bytes(64))
    return str(d / "tera.npy")


def _checkpoint_bomb(d):
    """A copy of the run whose best.pt is 1.2 MB: one parameter's storage of 3 x 10^8 float32 (1.1 GiB)
    deflated (torch reads deflated zip members). Built from a real torch.save with the storage's size
    patched in its pickle; one 16 MiB block of zeros compressed and repeated, as in _bomb."""
    import io
    import shutil
    import zipfile

    run = d / "ckbomb"
    if run.exists():
        return str(run)
    shutil.copytree(d / "run", run)
    n = 3 * 10 ** 8
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, buf)
    members, chunk = [], 1 << 24
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        for info in z.infolist():
            body = z.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"M\xe8\x03" in body  # the storage's 1000 elements, BININT2
                body = body.replace(b"M\xe8\x03", b"J" + struct.pack("<i", n))
            if info.filename.endswith("/data/0"):
                c = zlib.compressobj(6, zlib.DEFLATED, -15)
                block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
                total, crc, zeros = 4 * n, 0, bytes(chunk)
                for _ in range(total // chunk):
                    crc = zlib.crc32(zeros, crc)
                rest = total % chunk
                data = block * (total // chunk) + c.compress(bytes(rest)) + c.flush()
                crc = zlib.crc32(bytes(rest), crc)
                members.append((info.filename, 8, crc, data, total))
            else:
                members.append((info.filename, 0, zlib.crc32(body), body, len(body)))
    _write_zip(run / "best.pt", members)
    return str(run)


MEMORY_CASES = [
    # (id, make(dir) -> path, argv with {path}/{run}, extra environment, regex of the one error line)
    ("npy header declaring terabytes", _terabyte_header, ["train", "--data", "{path}"], {},
     r"tera.npz: 'obs' of declared shape \(1000000, 1000000, 2\) float64 .*needs 14.6 TiB, over the limit of 1.0 GiB"),
    ("compressed npz inflating to 1.5 GiB", _bomb, ["train", "--data", "{path}"], {},
     r"bomb.npz: 'obs' of declared shape \(3, 32768, 4096\) float32 .*needs 1.5 GiB, over the limit"),
    ("num_actions of 1e9", _npz("act1e9.npz", obs=np.zeros((3, 5, 2)), actions=np.zeros((3, 4), np.int64),
                                num_actions=np.array(10 ** 9)), ["train", "--data", "{path}"], {},
     r"act1e9.npz: one-hot actions \(3 x 4 x 1000000000 num_actions\) needs 44.7 GiB, over the limit"),
    ("labels of 1e9", _npz("lab1e9.npz", obs=np.zeros((3, 5, 2)), labels=np.array([0, 10 ** 9, 2])),
     ["train", "--data", "{path}", "--model", "vrae", "--condition"], {},
     r"lab1e9.npz: one-hot labels \(3 x 1000000001 classes\) needs 11.2 GiB, over the limit"),
    ("num_labels of 1e9", _npz("nlab1e9.npz", obs=np.zeros((3, 5, 2)), labels=np.array([0, 1, 2]),
                               num_labels=np.array(10 ** 9)),
     ["train", "--data", "{path}", "--model", "vrae", "--condition"], {}, r"nlab1e9.npz: one-hot labels .*over the limit"),
    ("a line of 60,000 distinct words", _distinct_words, ["train", "--data", "{path}"], {},
     r"words.txt: the one-hot of sequence 0 \(non-blank line 1: 60001 tokens with <eos>, x a vocabulary of 60002\) "
     r"needs 13.4 GiB, over the limit"),
    ("pickle memo expanding to 35 GB", _memo_pickle, ["train", "--data", "{path}"], {},
     r"memo.pickle: piano rolls of 100040000 steps needs 32.8 GiB, over the limit"),
    ("--iw-samples 1e9", lambda d: "", ["eval", "{run}", "--iw-samples", "1000000000"], {},
     r"--iw-samples: 1000000000 samples .* over the limit of 1.0 GiB \(raise it with DVAE_MAX_BYTES"),
    ("--iw-samples 1e9 of score", lambda d: "", ["score", "{run}", "--iw-samples", "1000000000"], {},
     r"--iw-samples: 1000000000 samples .* over the limit"),
    ("--particles 1e9", lambda d: "", ["eval", "{run}", "--particles", "1000000000"], {}, r"--particles: .*over the limit"),
    ("--num-samples 1e9 of generate", lambda d: "", ["generate", "{run}", "--num-samples", "1000000000"], {},
     r"--num-samples: .*over the limit"),
    ("an allocation the limit was raised for", _npz("act1e9b.npz", obs=np.zeros((3, 5, 2)),
                                                    actions=np.zeros((3, 4), np.int64), num_actions=np.array(10 ** 9)),
     ["train", "--data", "{path}"], {"DVAE_MAX_BYTES": "1e13"}, r"out of memory \(Unable to allocate 44.7 GiB"),
    ("a text file linked to /dev/zero", _link_to_dev_zero("devzero.txt"), ["train", "--data", "{path}"], {},
     r"devzero.txt: a device, not a regular text file"),
    ("a pickle linked to /dev/zero", _link_to_dev_zero("devzero.pickle"), ["train", "--data", "{path}"], {},
     r"devzero.pickle: a device, not a regular data pickle"),
    ("an npz linked to /dev/zero", _link_to_dev_zero("devzero.npz"), ["train", "--data", "{path}"], {},
     r"devzero.npz: a device, not a regular .npz file"),
    ("a text file that is a FIFO", _fifo("fifo.txt"), ["train", "--data", "{path}"], {},
     r"fifo.txt: a FIFO, not a regular text file"),
    ("an npz that is a FIFO", _fifo("fifo.npz"), ["train", "--data", "{path}"], {}, r"fifo.npz: a FIFO, not a regular"),
    ("a pickle that is a FIFO", _fifo("fifo.pkl"), ["train", "--data", "{path}"], {}, r"fifo.pkl: a FIFO, not a regular"),
    ("config.json linked to /dev/zero", _run_with_special_config("cfgzero", lambda p: os.symlink("/dev/zero", p)),
     ["eval", "{path}"], {}, r"config.json: a device, not a regular config.json"),
    ("config.json that is a FIFO", _run_with_special_config("cfgfifo", os.mkfifo), ["eval", "{path}"], {},
     r"config.json: a FIFO, not a regular config.json"),
    ("a manifest.json that is a FIFO", lambda d: (os.makedirs(d / "shards", exist_ok=True),
                                                  os.path.exists(d / "shards" / "manifest.json")
                                                  or os.mkfifo(d / "shards" / "manifest.json"), str(d / "shards"))[-1],
     ["train", "--data", "{path}"], {}, r"manifest.json: a FIFO, not a regular JSON file"),
    ("a CSV file linked to /dev/zero", _link_to_dev_zero("devzero.csv"), ["train", "--data", "{path}"], {},
     r"devzero.csv: a device, not a regular CSV file"),
    ("a CSV file that is a FIFO", _fifo("fifo.csv"), ["train", "--data", "{path}"], {},
     r"fifo.csv: a FIFO, not a regular CSV file"),
    ("an .npy that is a FIFO", _fifo("fifo.npy"), ["train", "--data", "{path}"], {},
     r"fifo.npy: a FIFO, not a regular .npy file"),
    ("an .npy header declaring terabytes", _tera_npy, ["train", "--data", "{path}"], {},
     r"tera.npy: an array of declared shape \(100000, 100000, 100\) float32 needs 3.6 TiB, over the limit"),
    ("a ragged CSV padded to 74.5 GiB", _ragged_csv, ["train", "--data", "{path}"], {},
     r"ragged.csv: the padded table of 100001 episodes of up to 100000 rows needs 74.5 GiB, over the limit"),
    # a small limit, so that a regression trains or collects megabytes instead of hanging on gigabytes
    ("--train-samples beyond the limit", lambda d: str(d / "good.npz"),
     ["train", "--data", "{path}", "--train-samples", "10000"], {"DVAE_MAX_BYTES": "1e6"},
     r"--train-samples = 10000: expected K x batch_size x \d+ floats .*within the limit of 1000000 bytes"),
    ("pendulum --episodes beyond the limit", lambda d: "pendulum",
     ["train", "--data", "{path}", "--episodes", "5000", "--steps", "64"], {"DVAE_MAX_BYTES": "1e6"},
     r"pendulum: 5000 episodes of 64 steps needs 5.0 MiB, over the limit of 976.6 KiB"),
    ("a best.pt whose deflated storage inflates to 1.1 GiB", _checkpoint_bomb, ["eval", "{path}"], {},
     r"ckbomb/best.pt: inflating its compressed members needs 1.1 GiB, over the limit of 1.0 GiB"),
]

_DRIVER = """
import contextlib, io, json, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from dvae.cli import main
results = []
for argv, env in json.loads(sys.argv[1]):
    saved = dict(os.environ)
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except BaseException as e:  # SystemExit, or a regression's raw error
            code = getattr(e, "code", None) or repr(e)[:300]
    os.environ.clear()
    os.environ.update(saved)
    results.append([code, out.getvalue()[:2000], err.getvalue()[-2000:]])
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def memory_results(work):
    """Every MEMORY_CASES command run in one subprocess under RLIMIT_AS and a timeout."""
    jobs = []
    for name, make, argv, env, _ in MEMORY_CASES:
        path = make(work)
        args = [a.format(path=path, run=work / "run", dir=work) for a in argv]
        if args[0] == "train":
            args += TINY + ["--out", str(work / ("mem-" + name.replace(" ", "-").replace("/", "-")))]
        jobs.append([args, env])
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    env.pop("DVAE_MAX_BYTES", None)
    proc = subprocess.run([sys.executable, "-c", _DRIVER.format(limit=MEMORY_LIMIT), json.dumps(jobs)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=str(work))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(zip([c[0] for c in MEMORY_CASES], json.loads(proc.stdout.strip().splitlines()[-1])))


@pytest.mark.parametrize("name, message", [(c[0], c[4]) for c in MEMORY_CASES], ids=[c[0] for c in MEMORY_CASES])
def test_declared_sizes_and_unbounded_reads_are_refused_under_a_memory_limit(memory_results, name, message):
    code, out, err = memory_results[name]
    assert code not in (0, None) and out == ""
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


def test_numpy_scalars_pickled_at_every_protocol_load(tmp_path):
    """Python 3 writes numpy scalars at protocols 0-2 through _codecs.encode: allowed, and still data only."""
    from dvae.data import load_polyphonic

    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = {"train": [[(np.int64(60), np.int32(62)), (np.float64(64.0),)]], "valid": [[(np.uint8(70),)]],
                "test": [[(np.int16(72),)]]}
        path = tmp_path / f"p{protocol}.pickle"
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
        d = load_polyphonic(str(path))
        assert np.flatnonzero(d.xs[0][0]).tolist() == [60 - 21, 62 - 21], protocol
        assert np.flatnonzero(d.xs[0][1]).tolist() == [64 - 21] and np.flatnonzero(d.xs[1][0]).tolist() == [70 - 21]


def test_codecs_encode_is_allowed_only_as_latin1_bytes_of_a_string(tmp_path):
    """The one function the unpickler admits for numpy scalars runs no other codec."""
    from dvae.data import safe_load
    from dvae.errors import DataError

    for args in ("(Vabc\nVrot13\ntR.", "(Vabc\nVutf-8\ntR."):
        (tmp_path / "c.pickle").write_bytes(("c_codecs\nencode\n" + args).encode())
        with pytest.raises(DataError, match="refusing _codecs.encode"):
            safe_load(str(tmp_path / "c.pickle"))
    (tmp_path / "ok.pickle").write_bytes(b"c_codecs\nencode\n(V\\u00ff\nVlatin1\ntR.")
    assert safe_load(str(tmp_path / "ok.pickle")) == b"\xff"


def test_every_float_flag_refuses_nan_and_infinity(capsys):
    """Every flag of every verb that parses a float refuses nan and inf at the command line (found by
    trying each flag's type on "1.5", so a float flag added later is covered too)."""
    import argparse

    from dvae.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = []
    for verb, p in sub.choices.items():
        for action in p._actions:
            if not action.option_strings or action.type is None:
                continue
            try:
                value = action.type("1.5")
            except (argparse.ArgumentTypeError, ValueError, TypeError):
                continue
            if not isinstance(value, float):
                continue
            found.append((verb, action.option_strings[0]))
            required = {"collect": ["--env", "Pendulum-v1", "--episodes", "1", "--steps", "1", "--out", "o.npz"],
                        "plan": ["run", "--env", "Pendulum-v1"], "impute": ["run", "--data", "d.npz", "--out", "o"]}
            positional = ["run"] if verb in ("eval", "score", "latent", "generate") else []
            for bad in ("nan", "inf", "-inf", "NaN"):
                with pytest.raises(SystemExit) as e:
                    parser.parse_args([verb, *positional, *required.get(verb, []), f"{action.option_strings[0]}={bad}"])
                assert e.value.code == 2
                assert "is not a finite number" in capsys.readouterr().err
    assert ("train", "--time-limit") in found and ("train", "--clip-norm") in found and ("score", "--quantile") in found
    assert len(found) >= 12


@pytest.mark.parametrize("name, make, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(capsys, work, name, make, argv, message):
    path = make(work)
    capsys.readouterr()
    args = [a.format(path=path, run=work / "run", dir=work) for a in argv]
    extra = []
    if args[0] == "train" and "--resume" not in args:  # a new run: tiny, into a directory of its own
        extra = TINY + ([] if "--out" in args else ["--out", str(work / ("out-" + name.replace(" ", "-")))])
    code = main(args + extra)
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""  # stdout stays parseable: nothing half-written
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert len(err.strip()) <= 540, err  # capped: "dvae VERB: error: " and at most 500 characters
    assert re.search(message, err), err
    assert not (work / "pwned-ckpt").exists() and not os.path.exists("/tmp/dvae-pwned-data")


def test_debug_shows_the_traceback(work):
    with pytest.raises(Exception):
        main(["eval", str(work / "no-such-run"), "--debug"])


@pytest.mark.parametrize("error, message", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)"),
     "dvae eval: error: out of memory (DefaultCPUAllocator: can't allocate memory: you tried to allocate 40000000000 "
     "bytes. Error code 12 (Cannot allocate memory)): the data or the sizes asked for need more memory than there is"),
    (MemoryError(), "dvae eval: error: out of memory (MemoryError): the data or the sizes asked for need more memory "
                    "than there is"),
])
def test_allocator_errors_are_one_line(capsys, monkeypatch, error, message):
    """numpy's MemoryError and torch's CPU allocator's RuntimeError (memory, not a bug) become one line."""
    import dvae.cli

    def fail(a):
        raise error

    monkeypatch.setattr(dvae.cli, "cmd_eval", fail)
    assert main(["eval", "some-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == message


def test_reads_are_capped_at_a_16th_of_the_size_limit(tmp_path, monkeypatch):
    """Text, pickles and JSON are read to at most DVAE_MAX_BYTES / 16 (their Python objects take many
    times the bytes); the limit an environment variable sets is the one applied."""
    from dvae.data import load_polyphonic
    from dvae.data.text import load_text
    from dvae.errors import DataError

    monkeypatch.setenv("DVAE_MAX_BYTES", str(16 * 1000))
    (tmp_path / "small.txt").write_text("a b c\n" * 100)  # 600 bytes
    assert len(load_text(str(tmp_path / "small.txt")).xs) == 100
    (tmp_path / "big.txt").write_text("a b c\n" * 200)  # 1200 bytes
    with pytest.raises(DataError, match=r"big.txt: reading this text file needs 1.2 KiB, over the limit of 1000 bytes"):
        load_text(str(tmp_path / "big.txt"))
    with open(tmp_path / "big.pickle", "wb") as f:
        pickle.dump({"train": [[(60,)]], "valid": [[(60,)]], "test": [[(60,)]], "notes": "x" * 2000}, f)
    with pytest.raises(DataError, match=r"big.pickle: reading this data pickle needs .* over the limit of 1000 bytes"):
        load_polyphonic(str(tmp_path / "big.pickle"))


@pytest.mark.parametrize("config", [dict(model="dmm"), dict(model="dmm", guide="iaf", num_iafs=2, iaf_dim=7),
                                    dict(model="dmm", guide="mean_field", bidirectional=True),
                                    dict(model="dmm", x_dim=64, frame_shape=[8, 8]), dict(model="vrnn", u_dim=2),
                                    dict(model="vrae", bidirectional=True, c_dim=3), dict(model="lgssm", u_dim=1),
                                    dict(model="vae"), dict(model="storn", u_dim=1), dict(model="srnn"),
                                    dict(model="rssm", u_dim=2), dict(model="dsae", u_dim=1, c_dim=2, v_dim=3),
                                    dict(model="kvae", u_dim=2, kvae_components=2, kvae_state_dim=3)],
                         ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_the_parameter_count_checked_before_building_is_the_built_models(config):
    """config validation counts a model's parameters on the meta device (the IAF flows by formula): the
    count equals that of the model built for real."""
    from dvae.models import ModelConfig, build_model
    from dvae.run import parameter_count

    cfg = ModelConfig(**{"x_dim": 3, "z_dim": 4, "rnn_dim": 8, "transition_dim": 6, "emission_dim": 5, **config})
    assert parameter_count(cfg) == sum(p.numel() for p in build_model(cfg).parameters())
