"""Every bad input of the reliability contract, in one table: a non-zero exit, one line on stderr that
names the file and the place, no traceback, nothing run from a data file."""

import json
import os
import pickle
import re

import numpy as np
import pytest

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
]


@pytest.mark.parametrize("name, make, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(capsys, work, name, make, argv, message):
    path = make(work)
    capsys.readouterr()
    args = [a.format(path=path, run=work / "run", dir=work) for a in argv]
    code = main(args + (TINY + ["--out", str(work / ("out-" + name.replace(" ", "-")))] if args[0] == "train" else []))
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""  # stdout stays parseable: nothing half-written
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (work / "pwned-ckpt").exists() and not os.path.exists("/tmp/dvae-pwned-data")


def test_debug_shows_the_traceback(work):
    with pytest.raises(Exception):
        main(["eval", str(work / "no-such-run"), "--debug"])
