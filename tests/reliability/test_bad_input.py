"""Every bad input of the reliability contract, in one table: a non-zero exit, one line on stderr that
names the file and the place, no traceback, nothing run from a data file."""

import json
import os
import pickle
import re

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
            pickle.dump(obj(d), f) if callable(obj) else f.write(obj)
        return str(run)
    return make


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
     r"checkpoint.pt: not a loadable checkpoint"),
    ("checkpoint that would run code", _run_with_checkpoint("evil", lambda d: _Evil(d / "pwned-ckpt")), ["eval", "{path}"],
     r"checkpoint.pt: not a loadable checkpoint"),
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
     _run_with_edited_checkpoint("ck-rng-cuda", lambda c: c.update(cuda_rng=["no"])),
     ["train", "--resume", "{path}"], r"checkpoint.pt: cuda_rng\[0\]: expected a generator state"),
    ("checkpoint: optimiser state of the wrong shape",
     _run_with_edited_checkpoint("ck-optim", _ckpt_set([_first_optim_entry, "exp_avg"], torch.zeros(7))),
     ["train", "--resume", "{path}"], r"checkpoint.pt: optim\[.*\]\.state\[0\]\.exp_avg"),
    ("checkpoint: optimiser state not a dictionary", _run_with_edited_checkpoint("ck-optim2", _ckpt_set(["optim"], [1])),
     ["train", "--resume", "{path}"], r"checkpoint.pt: optim: a list, not the optimiser state's dictionary"),
    ("best.pt: non-finite parameters",
     _run_with_edited_checkpoint("ck-nan", lambda c: next(iter(c["model"].values())).fill_(float("nan")), "best.pt"),
     ["eval", "{path}"], r"best.pt: model\['.*'\]: has non-finite values"),
    ("impute on a run trained without --missing nan", _npz("gappy.npz", obs=nan_obs, actions=np.zeros((3, 4, 1))),
     ["impute", "{run}", "--data", "{path}", "--out", "{dir}/filled.npz"], r"trained without --missing nan"),
]


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
    assert re.search(message, err), err
    assert not (work / "pwned-ckpt").exists() and not os.path.exists("/tmp/dvae-pwned-data")


def test_debug_shows_the_traceback(work):
    with pytest.raises(Exception):
        main(["eval", str(work / "no-such-run"), "--debug"])
