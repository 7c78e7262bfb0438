"""Crash-safe file writes: temp file in the target directory, fsync, verify, then os.replace (or os.link)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def sha256_file(path: Path, *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed so large files do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# What fsync of a folder answers where the file system cannot flush one (some network shares and FUSE mounts):
# there is nothing more to do. Any other error (EIO, ENOSPC) means the entry may not be on disk, and is raised.
_NO_FOLDER_FSYNC = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF}


def _fsync_dir(directory: Path) -> None:
    # Without a directory fsync the rename itself may be lost on power failure.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FOLDER_FSYNC:
            raise
    finally:
        os.close(fd)


def _folders_make(folder: Path) -> None:
    """Create ``folder`` and any parents missing, each new one's entry flushed to disk in its parent.

    A file's fsync and its folder's cover the file's name only: the entry of a folder made for it (each run's
    ``attempt-N/``) could still be lost in a power cut, and the file with it, after its row had committed.
    """
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir()
        except FileExistsError:
            continue  # another writer made it meanwhile, and flushed its entry
        _fsync_dir(made.parent)


# What link() answers on a file system without hard links (FAT, some network shares).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def _link_into_place(tmp_path: Path, path: Path) -> None:
    """Give the temp file the name ``path``, or raise FileExistsError when that name is taken; never replace it."""
    try:
        # Creating a name fails if it exists, in the same step: no other writer can slip in between a check and
        # the write, as it could with an exists() before os.replace.
        os.link(tmp_path, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # No hard links here: the check and the rename are two steps again.
        if path.exists():
            raise FileExistsError(errno.EEXIST, "refusing to write over an existing file", str(path)) from None
        os.replace(tmp_path, path)
        return
    # The data is in place under its name; a temp name left over (a hidden .part file) is no failure of the write.
    with contextlib.suppress(OSError):
        tmp_path.unlink()


# The temp names atomic_writer gives: "." + the target's name + "." + mkstemp's eight characters + ".part".
_TEMP_PREFIX = "."
_TEMP_SUFFIX = ".part"
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.part", re.ASCII)


@contextlib.contextmanager
def atomic_writer(
    path: Path, *, verify: Callable[[Path], None] | None = None, overwrite: bool = True
) -> Iterator[BinaryIO]:
    """Yield a binary handle; on clean exit the data replaces ``path`` atomically.

    The temp file lives in the same directory so ``os.replace`` never crosses a
    filesystem. ``verify`` runs on the fsynced temp file before the rename and may
    raise to abort. Any exception leaves no partial file behind. With ``overwrite``
    false, a file already at ``path`` is left as it is and FileExistsError raised.
    """
    path = Path(path)
    _folders_make(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    tmp_path = Path(tmp_name)
    try:
        # mkstemp creates 0600; published artefacts must be readable by other service users.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if verify is not None:
            verify(tmp_path)
        if overwrite:
            os.replace(tmp_path, path)
        else:
            _link_into_place(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(
    path: Path, data: bytes, *, expected_sha256: str | None = None, overwrite: bool = True
) -> str:
    """Write ``data`` atomically, refusing it if its sha256 differs from ``expected_sha256``.

    With ``overwrite`` false, a file already at ``path`` is kept and FileExistsError raised.
    """
    actual = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise ValueError(f"refusing to write {Path(path).name}: sha256 {actual} != expected {expected_sha256}")
    with atomic_writer(path, overwrite=overwrite) as handle:
        handle.write(data)
    return actual


def abandoned_temp_files_remove(directory: Path, *, older_than_s: float) -> list[Path]:
    """Remove the temp files of writes killed midway in ``directory`` and below; returns the paths removed.

    A writer killed with SIGKILL, or by a power cut, never reaches its cleanup and
    leaves its temp file for good. Only plain files named as ``atomic_writer``
    names its temp files and untouched for ``older_than_s`` are removed: a live
    write changes its file's time with every write, and finishes in seconds.
    Never a file under its final name, a link or a folder.
    """
    cutoff = time.time() - older_than_s
    removed: list[Path] = []
    # Links to folders are not followed: what lies outside ``directory`` is not ours to clear.
    for folder, _folders, names in os.walk(directory):
        for name in names:
            if not _TEMP_NAME.fullmatch(name):
                continue
            path = Path(folder) / name
            try:
                info = path.lstat()
                if not stat.S_ISREG(info.st_mode) or info.st_mtime > cutoff:
                    continue
                path.unlink()
            except OSError:
                # Gone meanwhile (its write finished after all) or not ours to remove: left as it is.
                continue
            removed.append(path)
    return removed
