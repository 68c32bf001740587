"""The one atomic writer (dvae.files), the run directory's start and lock (dvae.rundir) and the data
fingerprint (dvae.data.fingerprint), unit by unit."""

import hashlib
import os
import signal
import stat
import subprocess
import sys
import zipfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from dvae.data.fingerprint import absolute_source, check_unchanged, fingerprint  # noqa: E402
from dvae.errors import DataError, RunDirError  # noqa: E402
from dvae.files import atomic_write, save_figure, write_text  # noqa: E402
from dvae.rundir import RunLock, check_new_run_dir, start_run  # noqa: E402


def _listing(d):
    return sorted(os.listdir(d))


def test_atomic_write_replaces_a_symlink_at_the_destination_instead_of_following_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "out.txt")
    write_text(tmp_path / "out.txt", "new")
    assert victim.read_text() == "precious"
    assert not os.path.islink(tmp_path / "out.txt") and (tmp_path / "out.txt").read_text() == "new"


def test_save_figure_replaces_a_symlink_and_writes_a_png(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "plot.png")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "plot.png", dpi=50)
    plt.close(fig)
    assert victim.read_text() == "precious"
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_honours_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "f", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == mode


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    write_text(tmp_path / "f", "old")

    def fail(f):
        f.write(b"half")
        raise ValueError("disk full")

    with pytest.raises(ValueError):
        atomic_write(tmp_path / "f", fail)
    assert (tmp_path / "f").read_text() == "old" and _listing(tmp_path) == ["f"]


def test_signals_during_a_write_wait_for_it_and_leave_no_temporary(tmp_path):
    """SIGTERM twice in the middle of a write: the file is complete, no .tmp is left, and the handler
    runs (here: raising) only once the write is over."""
    seen = []

    def handler(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)

    def write(f):
        f.write(b"first half ")
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == []  # held back
        f.write(b"second half")

    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_write(tmp_path / "f", write)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert (tmp_path / "f").read_bytes() == b"first half second half" and _listing(tmp_path) == ["f"]


def test_replace_false_refuses_an_existing_file_or_symlink(tmp_path):
    write_text(tmp_path / "f", "mine")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    for name in ("f", "dangling"):
        with pytest.raises(FileExistsError):
            write_text(tmp_path / name, "other", replace=False)
    assert (tmp_path / "f").read_text() == "mine" and _listing(tmp_path) == ["dangling", "f"]
    write_text(tmp_path / "g", "new", replace=False)
    assert (tmp_path / "g").read_text() == "new"


def test_start_run_creates_the_directory_at_once_and_refuses_what_is_not_new(tmp_path):
    lock = RunLock()
    start_run(str(tmp_path / "run"), {"config.json": b"{}", "checkpoint.pt": lambda f: f.write(b"ck")}, lock)
    assert lock.held and _listing(tmp_path) == ["run"]
    assert _listing(tmp_path / "run") == [".lock", "checkpoint.pt", "config.json"]
    with pytest.raises(RunDirError, match="in use"):  # the lock moved with the directory
        RunLock().acquire(str(tmp_path / "run"))
    lock.release()
    RunLock().acquire(str(tmp_path / "run")).release()
    with pytest.raises(RunDirError, match="already holds a run"):
        start_run(str(tmp_path / "run"), {"config.json": b"{}"}, RunLock())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    with pytest.raises(RunDirError, match="not empty and not a run directory"):
        check_new_run_dir(str(tmp_path / "other"))


def test_a_start_that_fails_leaves_nothing_behind(tmp_path):
    def fail(f):
        raise OSError("no space left")

    lock = RunLock()
    with pytest.raises(OSError, match="no space"):
        start_run(str(tmp_path / "run"), {"config.json": b"{}", "checkpoint.pt": fail}, lock)
    assert not lock.held and _listing(tmp_path) == []


def test_start_run_into_an_empty_directory_reached_through_a_symlink_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with RunLock() as lock:
        start_run(str(tmp_path / "link"), {"config.json": b"{}"}, lock)
    assert os.path.islink(tmp_path / "link") and (tmp_path / "real" / "config.json").read_bytes() == b"{}"


def test_the_lock_is_refused_to_another_process(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock().acquire(str(run)):
        code = "from dvae.rundir import RunLock; RunLock().acquire(%r)" % str(run)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert p.returncode != 0 and "in use: another dvae process" in p.stderr
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_a_symlinked_lock_file_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "run" / ".lock")
    with pytest.raises(RunDirError, match="a symlink"):
        RunLock().acquire(str(tmp_path / "run"))
    assert not (tmp_path / "elsewhere").exists()


def test_fingerprint_is_the_files_sha256_and_sees_any_change(tmp_path, monkeypatch):
    (tmp_path / "d.npz").write_bytes(b"abc" * 1000)
    fp = fingerprint(str(tmp_path / "d.npz"))
    assert fp.size == 3000 and fp.sha256 == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert fingerprint("pendulum") is None
    check_unchanged(str(tmp_path / "d.npz"), *fp)
    (tmp_path / "d.npz").write_bytes(b"abd" + b"abc" * 999)  # same size, one byte changed
    with pytest.raises(DataError, match="changed since training"):
        check_unchanged(str(tmp_path / "d.npz"), *fp)
    os.remove(tmp_path / "d.npz")
    with pytest.raises(DataError, match="missing"):
        check_unchanged(str(tmp_path / "d.npz"), *fp)
    check_unchanged(str(tmp_path / "d.npz"), None, None)  # an older run: nothing recorded, nothing checked
    monkeypatch.chdir(tmp_path)
    assert absolute_source("x.npz") == str(tmp_path / "x.npz")
    assert absolute_source("text:c.txt") == "text:" + str(tmp_path / "c.txt")
    assert absolute_source("pendulum") == "pendulum"


def test_an_npz_saved_again_with_the_same_arrays_has_the_same_fingerprint(tmp_path):
    import time as _time

    import numpy as np

    arrays = {"obs": np.arange(12.0).reshape(2, 3, 2), "actions": np.ones((2, 2, 1))}
    np.savez(tmp_path / "a.npz", **arrays)
    first = fingerprint(str(tmp_path / "a.npz"))
    _time.sleep(2.1)  # the zip's timestamps have a 2-second resolution
    np.savez_compressed(tmp_path / "a.npz", **arrays)  # other bytes, other timestamps, the same arrays
    assert fingerprint(str(tmp_path / "a.npz")) == first
    with zipfile.ZipFile(tmp_path / "a.npz") as z:  # the members' .npy bytes, uncompressed
        assert first.size == sum(i.file_size for i in z.infolist()) > sum(v.nbytes for v in arrays.values())
    arrays["obs"][1, 2, 0] = -1.0
    np.savez(tmp_path / "a.npz", **arrays)
    assert fingerprint(str(tmp_path / "a.npz")).sha256 != first.sha256


def test_fingerprint_of_a_shard_directory_covers_every_shard(tmp_path):
    from dvae.data.lazy import write_manifest

    (tmp_path / "s").mkdir()
    for k in range(2):
        (tmp_path / "s" / f"shard-{k}.npz").write_bytes(bytes([k]) * 10)
    write_manifest(str(tmp_path / "s"), [{"file": f"shard-{k}.npz", "episodes": 1} for k in range(2)])
    fp = fingerprint(str(tmp_path / "s"))
    assert fp.size == 20 + os.path.getsize(tmp_path / "s" / "manifest.json")
    (tmp_path / "s" / "shard-1.npz").write_bytes(b"\x02" * 10)
    assert fingerprint(str(tmp_path / "s")).sha256 != fp.sha256
