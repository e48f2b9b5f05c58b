"""Whole files written so that a reader never sees half of one: a temporary file beside the
target, fsynced, renamed over it, and the directory fsynced. One helper for every file the
client writes whole (reports, figures, the resume rewrite of a scored file)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


def _umask_mode() -> int:
    """What `open()` would give a new file: 0o666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_file(path: str, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file to write that replaces `path` only when the block ends without an error
    (on an error the temporary file is removed and `path` is untouched). `mode` defaults to
    what a new file gets under the umask, so shared output folders keep working for other uids."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), _umask_mode() if mode is None else mode)
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def atomic_write(path: str, data: bytes) -> None:
    """`data` as the whole of `path`, atomically."""
    with atomic_file(path) as out:
        out.write(data)
