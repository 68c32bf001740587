"""The one way the project writes a file: atomically, never through a symlink, honouring the umask.

:func:`atomic_write` writes into a new temporary file in the destination's directory (created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0666, so the umask sets the final mode), flushes and fsyncs
it, renames it over the destination with ``os.replace`` and fsyncs the directory. ``rename`` replaces
the destination's directory entry itself: a symlink there is replaced by the new file, never followed,
so a planted link cannot make a write land elsewhere. A reader sees the old file or the new one, never
a part; a process killed at any moment leaves at most a hidden ``.NAME.*.tmp`` file, and none when it
is stopped by an exception or a signal (SIGINT and SIGTERM are held back while the main thread writes,
and the temporary file is removed on any error).

Everything that writes (run directories, data from ``dvae collect``, plots, benchmark results) goes
through here; nothing in this module imports the rest of the package.
"""

from __future__ import annotations

import errno
import io
import json
import os
import secrets
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Union

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _signals_held():
    """SIGINT and SIGTERM held back (delivered on exit, each once) while the main thread writes a file.
    Held by a recording Python handler, not by the signal mask: a signal sent to the process may be
    delivered to any thread (torch's, tqdm's), and Python runs its handler in the main thread whichever
    thread took it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    old = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):  # as a blocked signal: delivered once however often it came
            signal.raise_signal(sig)


def fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (a no-op where the filesystem cannot fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


def atomic_write(path: Union[str, os.PathLike], write: Union[bytes, Callable], replace: bool = True) -> str:
    """Write ``path`` atomically: ``write`` is the bytes, or a function given the open binary file.

    ``replace=False``: refuse (FileExistsError) when ``path`` exists, checked atomically at the rename
    (a hard link of the temporary file), so two writers can never both win. Parent directories are
    created. Returns ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if os.path.isdir(path) and not os.path.islink(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", path)
    if not replace and os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, "already exists", path)
    tmp = os.path.join(directory, f".{os.path.basename(path)[:100]}.{secrets.token_hex(6)}.tmp")
    with _signals_held():
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                if callable(write):
                    write(f)
                else:
                    f.write(write)
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                _rename_no_replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        fsync_directory(directory)
    return path


def _rename_no_replace(tmp: str, path: str) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists (FileExistsError), atomically where hard links work."""
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "already exists", path) from None
    except OSError:  # a filesystem without hard links: check, then rename
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "already exists", path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def make_dir(path: Union[str, os.PathLike]) -> str:
    """A real directory at ``path`` (created, the umask applying, with its parents), for files a run
    writes into a folder of its own (``RUN/latent``): a symlink planted there is replaced by a new
    directory, never followed, so the writes cannot land elsewhere. Returns ``path``."""
    path = os.fspath(path)
    if os.path.islink(path):
        os.unlink(path)
    os.makedirs(path, exist_ok=True)
    if os.path.islink(path) or not os.path.isdir(path):  # raced, or a file
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
    return path


def write_bytes(path, data: bytes, replace: bool = True) -> str:
    return atomic_write(path, bytes(data), replace=replace)


def write_text(path, text: str, replace: bool = True) -> str:
    return atomic_write(path, text.encode("utf-8"), replace=replace)


def write_json(path, obj, indent=1, **kwargs) -> str:
    """``obj`` as JSON (plus a final newline)."""
    return write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def save_figure(fig, path, **savefig_kwargs) -> str:
    """A matplotlib figure rendered in memory (format from the file name's extension), then written
    with :func:`atomic_write`: ``savefig(path)`` itself would follow a symlink at ``path``."""
    path = os.fspath(path)
    buf = io.BytesIO()
    fmt = savefig_kwargs.pop("format", None) or (os.path.splitext(path)[1][1:].lower() or "png")
    fig.savefig(buf, format=fmt, **savefig_kwargs)
    return atomic_write(path, buf.getvalue())
