"""A run directory's life on disk: refused unless new or a run, started atomically, locked while it trains.

- :func:`check_new_run_dir`: a new run goes into a directory that does not exist or is empty; a run
  (``config.json``) or any other non-empty directory is refused, so nothing of the user's is replaced.
- :func:`start_run`: a run's first files (``config.json`` and the first ``checkpoint.pt``) are written
  into a hidden sibling directory, which is then renamed to the run directory. A start killed at any
  moment leaves no run directory (at most a hidden ``.NAME.start-*`` sibling, removed by the next start
  of that name), never a half-written one; a run directory that exists is complete and resumable. Two processes starting the same run
  cannot both succeed: the rename of the second fails because the first's directory is not empty.
- :class:`RunLock`: ``fcntl.flock`` on ``RUN/.lock``, held for the life of a training process (new or
  resumed); a second process gets a one-line error instead of interleaving its files with the first's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
from typing import Callable, Dict, Optional, Union

from dvae.errors import RunDirError
from dvae.files import atomic_write, fsync_directory

LOCK = ".lock"
CONFIG = "config.json"


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``RUN_DIR/.lock`` (released by :meth:`release`, on exit
    from a ``with`` block, or when the process ends). The lock follows the directory if it is renamed."""

    def __init__(self):
        self._fd: Optional[int] = None
        self.run_dir: Optional[str] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, run_dir: str) -> "RunLock":
        if self._fd is not None:
            raise RuntimeError(f"this RunLock already holds {self.run_dir}")
        path = os.path.join(run_dir, LOCK)
        try:  # O_NOFOLLOW: a symlink planted as .lock is refused, not followed
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as e:
            why = "a symlink" if e.errno == errno.ELOOP else e.strerror
            raise RunDirError(f"{path}: cannot open the run's lock file ({why})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"{run_dir}: in use: another dvae process is training this run (it holds "
                                  f"{path}); wait for it to finish or stop it") from None
            raise RunDirError(f"{path}: cannot lock the run ({e.strerror})") from None
        self._fd, self.run_dir = fd, run_dir
        return self

    def moved(self, run_dir: str) -> None:
        """The locked directory was renamed to ``run_dir`` (the lock, on its inode, stays held)."""
        self.run_dir = run_dir

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        self.release()


def check_new_run_dir(run_dir: str) -> None:
    """Refuse ``run_dir`` for a new run unless it does not exist or is an empty directory."""
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"{run_dir}: exists and is not a directory (choose another --out)")
    if not os.path.isdir(run_dir):
        return
    if os.path.lexists(os.path.join(run_dir, CONFIG)):
        raise RunDirError(f"{run_dir}: already holds a run (use --resume {run_dir}, or another --out)")
    try:
        entries = sorted(os.listdir(run_dir))
    except OSError as e:
        raise RunDirError(f"{run_dir}: cannot be read ({e.strerror})") from None
    try:
        here = os.path.samefile(run_dir, os.getcwd())
    except OSError:
        here = False
    if here and not entries:  # start_run's rename replaces the empty directory: the cwd would be left deleted
        raise RunDirError(f"{run_dir}: is the current directory, which a new run cannot be created in (its "
                          "directory appears at once, replacing an empty one): run from the parent directory "
                          "with --out NAME, or choose another --out")
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise RunDirError(f"{run_dir}: not empty and not a run directory (it holds {shown}); a new run needs a "
                          "new or empty directory: choose another --out")


def _remove_dead_starts(parent: str, name: str) -> None:
    """Remove the hidden ``.NAME.start-*`` siblings that starts killed before their rename left behind:
    those whose lock no process holds (a live start holds its staging directory's lock from just after
    creating it; one without a lock file is taken as dead after a minute)."""
    import time

    prefix = f".{name[:100]}.start-"
    try:
        entries = [e for e in os.listdir(parent) if e.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        staging = os.path.join(parent, entry)
        if os.path.islink(staging) or not os.path.isdir(staging):
            continue
        try:
            fd = os.open(os.path.join(staging, LOCK), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            try:
                if time.time() - os.lstat(staging).st_mtime > 60:
                    shutil.rmtree(staging, ignore_errors=True)
            except OSError:
                pass
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # a start in progress
            continue
        try:
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            os.close(fd)


def start_run(run_dir: str, files: Dict[str, Union[bytes, Callable]], lock: RunLock) -> None:
    """Create the run directory ``run_dir`` holding ``files`` (name -> bytes, or a function writing the
    open file), all at once, and leave ``lock`` holding it. Refuses (RunDirError) where
    :func:`check_new_run_dir` does, also when another process gets there first."""
    check_new_run_dir(run_dir)
    # an existing empty directory (perhaps reached through a symlink) is replaced where it really is
    target = os.path.realpath(run_dir) if os.path.isdir(run_dir) else os.path.abspath(run_dir)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    _remove_dead_starts(parent, name)
    staging = os.path.join(parent, f".{name[:100]}.start-{secrets.token_hex(6)}")
    os.mkdir(staging, 0o777)  # the umask applies
    try:
        lock.acquire(staging)
        for filename, content in files.items():
            atomic_write(os.path.join(staging, filename), content)
        fsync_directory(staging)
        try:
            os.rename(staging, target)  # onto nothing, or onto an empty directory: atomic
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise RunDirError(f"{run_dir}: another process started a run there first (choose another "
                                  "--out)") from None
            raise
        fsync_directory(parent)
        lock.moved(run_dir)
    except BaseException:
        lock.release()
        shutil.rmtree(staging, ignore_errors=True)
        raise
