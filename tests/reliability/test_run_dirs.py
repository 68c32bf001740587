"""Run directories under hostile conditions, through the command line only (so each test also runs
against older code, where it fails): a planted symlink, an --out that is not a run, two processes on
one run, a relative data path read from another directory, a killed or failed start, signals at the
edges, the umask, shards that exist, impute on a run without missing data."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dvae.cli import main

DVAE = [sys.executable, "-m", "dvae.cli"]
TINY = ["--z-dim", "2", "--rnn-dim", "8", "--transition-dim", "8", "--emission-dim", "8", "--batch-size", "4",
        "--seed", "0", "--no-progress", "--patience", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
       "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                      os.environ.get("PYTHONPATH", "")])}


def _npz(path, seed=0, n=12, length=9, missing=False):
    g = np.random.default_rng(seed)
    obs = g.standard_normal((n, length, 2)).astype(np.float32)
    if missing:
        obs[0, 3, 1] = np.nan
    np.savez(path, obs=obs, actions=g.uniform(-1, 1, (n, length - 1, 1)).astype(np.float32))
    return str(path)


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, out, err, pattern):
    assert code != 0 and code is not None
    assert out == ""
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert pattern in err, err


def _tmp_files(root):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".tmp")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run (2 epochs) on an .npz; tests copy it."""
    d = tmp_path_factory.mktemp("runs")
    data = _npz(d / "d.npz")
    assert main(["train", "--data", data, *TINY, "--epochs", "2", "--out", str(d / "run")]) == 0
    return d


def _copy(trained, tmp_path, name="run"):
    run = tmp_path / name
    shutil.copytree(trained / "run", run, symlinks=True)
    return run


# --- critical 1: a plot that is a symlink is replaced, never written through -------------------------
def test_train_resume_replaces_a_symlinked_plot_and_leaves_its_target_alone(capsys, trained, tmp_path):
    run = _copy(trained, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("training_curves.png", "reconstruction.png"):
        os.remove(run / name)
        os.symlink(victim, run / name)
    code, out, err = _cli(capsys, "train", "--resume", run, "--epochs", "3", "--no-progress")
    assert code == 0, err
    assert victim.read_text() == "precious"
    for name in ("training_curves.png", "reconstruction.png"):
        assert not os.path.islink(run / name) and (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latent_replaces_a_symlinked_plot(capsys, trained, tmp_path):
    run = _copy(trained, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.makedirs(run / "latent")
    os.symlink(victim, run / "latent" / "latent_pca.png")
    code, out, err = _cli(capsys, "latent", run, "--no-tsne", "--split", "all")
    assert code == 0, err
    assert victim.read_text() == "precious"
    assert not os.path.islink(run / "latent" / "latent_pca.png")


def test_latent_replaces_a_symlinked_latent_directory_and_writes_nothing_where_it_pointed(capsys, trained, tmp_path):
    """RUN/latent itself a symlink to another directory: the plots go into a real RUN/latent."""
    run = _copy(trained, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "latent_pca.png").write_text("precious")
    os.symlink(elsewhere, run / "latent")
    code, out, err = _cli(capsys, "latent", run, "--no-tsne", "--split", "all")
    assert code == 0, err
    assert os.listdir(elsewhere) == ["latent_pca.png"] and (elsewhere / "latent_pca.png").read_text() == "precious"
    assert not os.path.islink(run / "latent") and os.path.isfile(run / "latent" / "latent_pca.png")


# --- critical 2: an --out that is not a run is refused ------------------------------------------------
def test_a_nonempty_out_that_is_not_a_run_is_refused_and_left_as_it_was(capsys, trained, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "best.pt").write_text("my own file")
    (out / "notes.txt").write_text("notes")
    code, stdout, err = _cli(capsys, "train", "--data", trained / "d.npz", *TINY, "--epochs", "1", "--out", out)
    _one_line_error(code, stdout, err, "not empty and not a run directory")
    assert sorted(os.listdir(out)) == ["best.pt", "notes.txt"] and (out / "best.pt").read_text() == "my own file"


def test_an_out_that_is_a_file_or_a_run_is_refused_but_an_empty_directory_is_used(capsys, trained, tmp_path):
    (tmp_path / "file").write_text("x")
    code, out, err = _cli(capsys, "train", "--data", trained / "d.npz", *TINY, "--epochs", "1", "--out", tmp_path / "file")
    _one_line_error(code, out, err, "exists and is not a directory")
    code, out, err = _cli(capsys, "train", "--data", trained / "d.npz", *TINY, "--epochs", "1", "--out", trained / "run")
    _one_line_error(code, out, err, "already holds a run")
    (tmp_path / "empty").mkdir()
    code, out, err = _cli(capsys, "train", "--data", trained / "d.npz", *TINY, "--epochs", "1", "--no-plots",
                          "--out", tmp_path / "empty")
    assert code == 0, err
    assert {"config.json", "checkpoint.pt", "best.pt", "metrics.jsonl"} <= set(os.listdir(tmp_path / "empty"))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no staging directory left behind


# --- critical 3: one training process per run ---------------------------------------------------------
def test_an_out_that_is_the_current_directory_is_refused(capsys, trained, tmp_path, monkeypatch):
    """`--out .` in an empty directory: the run's start replaces an empty --out as a whole, which would leave
    the process (and the user's shell) in a deleted directory; refused before anything is written."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", str(here)):
        code, stdout, err = _cli(capsys, "train", "--data", trained / "d.npz", *TINY, "--epochs", "1", "--out", out)
        _one_line_error(code, stdout, err, "is the current directory")
        assert os.listdir(here) == [] and os.listdir(tmp_path) == ["here"]


def test_a_killed_starts_hidden_directory_is_removed_by_the_next_start_but_a_live_one_is_kept(capsys, trained,
                                                                                            tmp_path):
    """A start killed before its rename leaves .NAME.start-*; the next start of NAME removes it (its lock is
    free) and keeps one whose lock a process holds."""
    import fcntl

    dead, live = tmp_path / ".run.start-0123456789ab", tmp_path / ".run.start-ba9876543210"
    for d in (dead, live):
        d.mkdir()
        (d / ".lock").write_text("")
        shutil.copy(trained / "run" / "checkpoint.pt", d / "checkpoint.pt")
    with open(live / ".lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out, err = _cli(capsys, "train", "--data", trained / "d.npz", *TINY, "--epochs", "1", "--no-plots",
                              "--out", tmp_path / "run")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == [".run.start-ba9876543210", "run"]


def test_two_processes_starting_one_run_give_one_run_and_one_clear_error(trained, tmp_path):
    out = str(tmp_path / "run")
    procs = [subprocess.Popen(DVAE + ["train", "--data", str(trained / "d.npz"), *TINY[:-5], "--seed", str(seed),
                                      "--no-progress", "--no-plots", "--epochs", "2", "--out", out],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for seed in (1, 2)]
    results = [p.communicate(timeout=240) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes[0] == 0 and codes[1] != 0, results
    (won_out, _, _), (_, lost_err, _) = sorted(results, key=lambda r: r[2])
    assert "Traceback" not in lost_err and len(lost_err.strip().splitlines()) == 1, lost_err
    assert "run" in lost_err
    seed = json.loads(open(os.path.join(out, "config.json")).read())["train"]["seed"]
    winner = [s for s, r in zip((1, 2), results) if r[2] == 0][0]
    assert seed == winner  # configuration, checkpoint and metrics of one process
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert rows == ckpt["rows"] and [r["epoch"] for r in rows] == [1, 2]
    assert min(r["valid_neg_elbo_per_step"] for r in rows) == json.loads(won_out)["best_valid_neg_elbo_per_step"]


def test_resume_while_the_run_trains_is_refused(trained, tmp_path):
    run = str(tmp_path / "run")
    proc = subprocess.Popen(DVAE + ["train", "--data", str(trained / "d.npz"), *TINY, "--epochs", "100000",
                                    "--out", run], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(run, "metrics.jsonl")) and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run(DVAE + ["train", "--resume", run, "--epochs", "100001", "--no-progress"],
                                capture_output=True, text=True, env=ENV, timeout=120)
        assert second.returncode != 0 and second.stdout == ""
        assert "in use" in second.stderr and len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert proc.poll() is None  # the first is untouched
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 130
    p = subprocess.run(DVAE + ["train", "--resume", run, "--epochs", "1", "--no-progress", "--no-plots"],
                       capture_output=True, text=True, env=ENV, timeout=120)  # the lock went with the process
    assert p.returncode == 0, p.stderr


# --- critical 4: the data path is absolute and fingerprinted -----------------------------------------
def test_eval_from_another_directory_reads_the_runs_own_file_and_refuses_a_changed_one(capsys, tmp_path, monkeypatch):
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    _npz(here / "d.npz", seed=0)
    _npz(there / "d.npz", seed=5)  # the same name elsewhere, other content
    monkeypatch.chdir(here)
    code, out, err = _cli(capsys, "train", "--data", "d.npz", *TINY, "--epochs", "1", "--no-plots", "--out", tmp_path / "run")
    assert code == 0, err
    code, out, err = _cli(capsys, "eval", tmp_path / "run", "--split", "all")
    assert code == 0, err
    reference = json.loads(out)["neg_elbo_per_step"]
    monkeypatch.chdir(there)
    code, out, err = _cli(capsys, "eval", tmp_path / "run", "--split", "all")
    assert code == 0, err
    assert json.loads(out)["neg_elbo_per_step"] == reference  # here/d.npz, not there/d.npz
    _npz(here / "d.npz", seed=3)  # changed in place
    code, out, err = _cli(capsys, "eval", tmp_path / "run", "--split", "all")
    _one_line_error(code, out, err, "changed since training")
    assert "--data" in err
    code, out, err = _cli(capsys, "train", "--resume", tmp_path / "run", "--epochs", "2", "--no-plots", "--no-progress")
    _one_line_error(code, out, err, "changed since training")
    os.remove(here / "d.npz")
    code, out, err = _cli(capsys, "eval", tmp_path / "run", "--split", "all")
    _one_line_error(code, out, err, "missing")
    assert "--data" in err
    code, out, err = _cli(capsys, "eval", tmp_path / "run", "--split", "all", "--data", there / "d.npz")
    assert code == 0, err  # --data reads another file, as asked


# --- major 6: a failed or killed start leaves no run, or a resumable one -----------------------------
@pytest.mark.parametrize("flags, message", [(["--seed", "-1"], "--seed = -1"),
                                            (["--seed", str(2 ** 32)], "--seed = 4294967296"),
                                            (["--lr", "-1"], "--lr = -1.0")])
def test_a_failed_start_writes_nothing(capsys, trained, tmp_path, flags, message):
    code, out, err = _cli(capsys, "train", "--data", trained / "d.npz", *TINY, "--epochs", "1", *flags,
                          "--out", tmp_path / "run")
    _one_line_error(code, out, err, message)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_writes_nothing(capsys, trained, tmp_path):
    code, out, err = _cli(capsys, "train", "--data", trained / "d.npz", *TINY, "--device", "cuda", "--out", tmp_path / "run")
    _one_line_error(code, out, err, "CUDA is not available")
    assert os.listdir(tmp_path) == []


def test_a_start_killed_as_soon_as_config_json_appears_leaves_a_resumable_run(trained, tmp_path):
    run = str(tmp_path / "run")
    proc = subprocess.Popen(DVAE + ["train", "--data", str(trained / "d.npz"), *TINY, "--epochs", "3", "--out", run],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(run, "config.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    assert os.path.exists(os.path.join(run, "config.json"))
    p = subprocess.run(DVAE + ["train", "--resume", run, "--no-progress", "--no-plots"], capture_output=True,
                       text=True, env=ENV, timeout=240)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(DVAE + ["eval", run], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr


# --- minor: resume flags, signals at the edges, umask, shards, impute --------------------------------
@pytest.mark.parametrize("flags, message", [(["--epochs", "-5"], "--epochs = -5"),
                                            (["--model", "vrnn"], "--model"),
                                            (["--z-dim", "4"], "--z-dim"),
                                            (["--model", "dmm"], "--model")])  # the default, but given
def test_resume_refuses_what_it_would_ignore(capsys, trained, tmp_path, flags, message):
    run = _copy(trained, tmp_path)
    before = sorted(os.listdir(run))
    code, out, err = _cli(capsys, "train", "--resume", run, *flags)
    _one_line_error(code, out, err, message)
    assert sorted(os.listdir(run)) == before


@pytest.mark.parametrize("signals", [1, 2])
def test_a_signal_after_the_last_epoch_ends_with_the_summary_and_no_tmp_file(capsys, trained, tmp_path, monkeypatch,
                                                                           signals):
    import dvae.fitting

    write = dvae.fitting.write_train_plots

    def interrupted(*args, **kwargs):  # SIGTERM while the plots are drawn, after the last epoch
        for _ in range(signals):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        return write(*args, **kwargs)

    monkeypatch.setattr(dvae.fitting, "write_train_plots", interrupted)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit:
        main(["train", "--data", str(trained / "d.npz"), *TINY, "--epochs", "2", "--out", str(run)])
    out, err = capsys.readouterr()
    assert exit.value.code == 130
    summary = json.loads(out)
    assert summary["interrupted"] is True and summary["epochs"] == 2
    assert "Traceback" not in err and "--resume" in err
    assert _tmp_files(tmp_path) == []
    code, out, err = _cli(capsys, "eval", run)
    assert code == 0, err


def test_a_double_sigterm_in_the_last_epoch_ends_with_the_summary_and_a_resumable_run(capsys, trained, tmp_path,
                                                                                     monkeypatch):
    from dvae.infer import trainer as trainer_module

    epoch = trainer_module.Trainer.train_epoch

    def twice(self, *args, **kwargs):
        if self.state["epoch"] == self.config.epochs - 1:  # the last epoch
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        return epoch(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", twice)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit:
        main(["train", "--data", str(trained / "d.npz"), *TINY, "--epochs", "2", "--out", str(run)])
    out, err = capsys.readouterr()
    assert exit.value.code == 130 and json.loads(out)["interrupted"] is True
    assert _tmp_files(tmp_path) == []
    monkeypatch.undo()
    code, out, err = _cli(capsys, "train", "--resume", run, "--no-progress", "--no-plots")
    assert code == 0, err
    assert json.loads(out)["epochs"] == 2


def test_written_files_honour_the_umask(capsys, trained, tmp_path):
    old = os.umask(0o027)
    try:
        code, out, err = _cli(capsys, "train", "--data", trained / "d.npz", *TINY, "--epochs", "1", "--out", tmp_path / "run")
        code2, out2, err2 = _cli(capsys, "collect", "--env", "Pendulum-v1", "--episodes", "2", "--steps", "3",
                                 "--out", tmp_path / "c.npz")
    finally:
        os.umask(old)
    assert code == 0 and code2 == 0, err + err2
    modes = {f: stat.S_IMODE(os.stat(tmp_path / "run" / f).st_mode) for f in os.listdir(tmp_path / "run")
             if f != ".lock"}
    assert set(modes.values()) == {0o640}, modes
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(tmp_path / "c.npz").st_mode) == 0o640


def test_collect_shards_never_overwrites_a_shard(capsys, tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    (out / "shard-00001.npz").write_bytes(b"an earlier shard")
    code, stdout, err = _cli(capsys, "collect", "--env", "Pendulum-v1", "--episodes", "4", "--steps", "3", "--shards", "2",
                             "--out", out)
    _one_line_error(code, stdout, err, "shard-00001.npz: already exists")
    assert os.listdir(out) == ["shard-00001.npz"] and (out / "shard-00001.npz").read_bytes() == b"an earlier shard"


def test_impute_refuses_a_run_trained_without_missing_nan(capsys, trained, tmp_path):
    gappy = _npz(tmp_path / "gappy.npz", missing=True)
    code, out, err = _cli(capsys, "impute", trained / "run", "--data", gappy, "--out", tmp_path / "filled.npz")
    _one_line_error(code, out, err, "--missing nan")
    assert not (tmp_path / "filled.npz").exists()


def test_a_relative_data_path_through_a_symlink_and_dotdot_is_recorded_as_the_file_that_was_read(capsys, tmp_path,
                                                                                                  monkeypatch):
    """`--data L/../d.npz` with L a symlink reads L's target's sibling; the run records that file (and its
    fingerprint), not ./d.npz (os.path.abspath drops `L/..` textually)."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    work.mkdir()
    read = _npz(elsewhere / "d.npz", seed=0)
    _npz(work / "d.npz", seed=1, n=6)  # another file of the same name where abspath would point
    os.symlink(elsewhere / "sub", work / "L")
    monkeypatch.chdir(work)
    code, out, err = _cli(capsys, "train", "--data", os.path.join("L", "..", "d.npz"), *TINY, "--epochs", "1",
                          "--no-plots", "--out", "run")
    assert code == 0, err
    cfg = json.loads((work / "run" / "config.json").read_text())["data"]
    assert cfg["source"] == os.path.realpath(read)
    from dvae.data.fingerprint import fingerprint

    assert cfg["source_sha256"] == fingerprint(read).sha256 != fingerprint(str(work / "d.npz")).sha256
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(capsys, "eval", work / "run")
    assert code == 0, err
    assert json.loads(out)["data"] == os.path.realpath(read)
