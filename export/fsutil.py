"""Writes that are never visible half-done: temp file in the same directory, fsync, rename.

Files and directories made here get the mode a plain `open()`/`mkdir()` gives (0666/0777 less
the umask, so normally 0644/0755), not `tempfile`'s private 0600/0700: what is renamed into place
is a published file that another user (TF Serving's uid 10001) must be able to read.

Temporaries named `<prefix><pid>-…` are removed by `remove_dead_temporaries` once their writer's
process is gone (a kill -9 leaves them behind).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

_ATTEMPTS = 100
_FILE_FLAGS = (
    os.O_RDWR
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def _candidate(directory: str | os.PathLike, prefix: str, suffix: str) -> str:
    return os.path.join(directory, f"{prefix}{secrets.token_hex(5)}{suffix}")


def make_temp_file(
    directory: str | os.PathLike, prefix: str = "", suffix: str = ""
) -> tuple[int, str]:
    """`tempfile.mkstemp` with the umask's mode (a new, exclusive file; returns fd and path)."""
    for _ in range(_ATTEMPTS):
        path = _candidate(directory, prefix, suffix)
        try:
            return os.open(path, _FILE_FLAGS, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {directory}")


def make_temp_dir(directory: str | os.PathLike, prefix: str = "") -> str:
    """`tempfile.mkdtemp` with the umask's mode (a new directory; returns its path)."""
    for _ in range(_ATTEMPTS):
        path = _candidate(directory, prefix, "")
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}* in {directory}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temporaries(
    directory: str | os.PathLike, prefix: str, *, only_mine: bool = False
) -> list[Path]:
    """Delete `<directory>/<prefix><pid>-*` left by a process that is gone (killed mid-write).

    The name carries its writer's pid; a temporary of a live process, or of this one, is kept.
    `only_mine` keeps other users' entries (for shared directories such as /tmp).
    """
    removed: list[Path] = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        if not path.name.startswith(prefix):
            continue
        try:
            pid = int(path.name[len(prefix) :].split("-")[0])
            if only_mine and path.lstat().st_uid != os.geteuid():
                continue
        except (ValueError, OSError):
            continue
        if pid != os.getpid() and not pid_alive(pid):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            if not os.path.lexists(path):
                removed.append(path)
    return removed


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def fsync_tree(root: str | os.PathLike) -> None:
    """Flush every file and directory under root, so a rename publishes complete content."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)
