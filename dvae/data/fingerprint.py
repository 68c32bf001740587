"""Where a run's data lives and what it held: an absolute source and a fingerprint of its content.

A run records its data source as an absolute path (a relative one would be resolved against whatever
directory ``dvae eval`` is later run from, silently reading another file of the same name) and a
fingerprint: the size in bytes and a SHA-256 of the content, streamed in 1 MiB blocks. A file's digest
is what ``sha256sum`` prints, except for an ``.npz``, whose content is its arrays: the digest covers each
member's name and uncompressed bytes, not the zip's timestamps, so data collected again with the same
seed is the same data. A directory of shards hashes its manifest and every shard file, each named. The run-reading verbs refuse a source that is missing or whose fingerprint changed, with a
hint to pass ``--data``. Built-in sources (:mod:`dvae.data.sources`) are generated, not read: no fingerprint.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from typing import List, NamedTuple, Optional, Tuple

from dvae.data.sources import is_builtin
from dvae.errors import DataError

BLOCK = 1 << 20


class Fingerprint(NamedTuple):
    size: int
    """Bytes of content, summed over the source's files (an .npz: its members uncompressed)."""
    sha256: str
    """Hex SHA-256 of the one file, or of the lines 'name sha256' of a directory's files."""


def _path(source: str) -> str:
    return source[len("text:"):] if source.startswith("text:") else source


def absolute_source(source: str) -> str:
    """``source`` with its path made absolute (``text:PATH`` keeps its prefix; built-ins unchanged)."""
    if is_builtin(source):
        return source
    prefix = "text:" if source.startswith("text:") else ""
    # the directory resolved as the OS resolves it ('L/../d.npz' through a symlink L is not './d.npz', as
    # abspath would have it); the file's own name kept, so a data link re-pointed later is seen as changed
    head, tail = os.path.split(_path(source))
    if tail in ("", ".", ".."):
        return prefix + os.path.realpath(_path(source))
    return prefix + os.path.join(os.path.realpath(head or "."), tail)


def source_files(source: str) -> Optional[List[str]]:
    """The files the loaders read for ``source`` (None for a built-in): the file itself, or a shard
    directory's manifest and shard files (a shard that is a directory of .npy arrays: its files)."""
    if is_builtin(source):
        return None
    path = _path(source)
    if os.path.isdir(path) or os.path.basename(path) == "manifest.json":
        from dvae.data.lazy import MANIFEST, shard_paths

        manifest = path if os.path.basename(path) == MANIFEST else os.path.join(path, MANIFEST)
        files = [manifest] if os.path.isfile(manifest) else []
        for shard in shard_paths(path):
            if os.path.isdir(shard):
                files += sorted(os.path.join(shard, f) for f in os.listdir(shard) if f.endswith(".npy"))
            else:
                files.append(shard)
        return files
    return [path]


def _stream(h, f) -> int:
    """Feed the open binary file ``f`` into the hash ``h``; the bytes read."""
    n = 0
    while True:
        block = f.read(BLOCK)
        if not block:
            return n
        h.update(block)
        n += len(block)


def _digest(path: str) -> Tuple[int, str]:
    """(size, SHA-256) of a file's content: its bytes, or for an .npz its members' names and bytes."""
    h = hashlib.sha256()
    if path.endswith(".npz") and zipfile.is_zipfile(path):
        try:
            size = 0
            with zipfile.ZipFile(path) as z:
                for info in sorted(z.infolist(), key=lambda i: i.filename):
                    h.update(f"{info.filename}\0{info.file_size}\0".encode())
                    with z.open(info) as f:
                        size += _stream(h, f)
            return size, h.hexdigest()
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError):
            h = hashlib.sha256()  # not a readable zip after all: its bytes
    with open(path, "rb") as f:
        size = _stream(h, f)
    return size, h.hexdigest()


def fingerprint(source: str) -> Optional[Fingerprint]:
    """The size and SHA-256 of ``source``'s content (None for a built-in source); DataError if a file
    it names is missing or not a regular file."""
    files = source_files(source)
    if files is None:
        return None
    size, lines = 0, []
    for path in files:
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
        n, digest = _digest(path)
        size += n
        lines.append(f"{os.path.relpath(path, os.path.dirname(_path(source)))} {digest}\n")
    if len(files) == 1:
        return Fingerprint(size, digest)
    return Fingerprint(size, hashlib.sha256("".join(lines).encode()).hexdigest())


def check_unchanged(source: str, size: Optional[int], sha256: Optional[str]) -> None:
    """Refuse (DataError) a recorded source that is missing or whose content changed since it was
    fingerprinted; nothing to check where no fingerprint was recorded (older runs, built-ins)."""
    if sha256 is None or is_builtin(source):
        return
    hint = "pass --data PATH to read the data from elsewhere"
    try:
        now = fingerprint(source)
    except DataError:
        raise DataError(f"{_path(source)}: the run's data is missing (moved or deleted since training?); "
                        f"{hint}") from None
    if now is not None and (now.size != size or now.sha256 != sha256):
        what = f"size {size} -> {now.size} bytes" if now.size != size else "same size, other SHA-256"
        raise DataError(f"{_path(source)}: the run's data changed since training ({what}); pass --data "
                        f"{source} to use it as it is now, or --data PATH for another file")
