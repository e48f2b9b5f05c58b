"""Versioned, atomic publishing under a model base path, as TF Serving expects it.

`<base>/<N>/` appears only complete and gated: a version is written into a hidden sibling
(`.tmp-export-<pid>-<random>`, never a plain integer, so TF Serving ignores it), checked, and
renamed into place. A kill -9 at any moment leaves at most a hidden temporary directory, which the
next export removes.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from export import fsutil
from export.publishing.versions import next_version

log = logging.getLogger(__name__)
TMP_PREFIX = ".tmp-export-"
T = TypeVar("T")


class VersionExistsError(FileExistsError):
    pass


def remove_stale_temporaries(base: str | Path) -> list[Path]:
    """Delete temporaries left by exports that died (their pid is gone)."""
    removed = fsutil.remove_dead_temporaries(base, TMP_PREFIX)
    for path in removed:
        log.info("removed %s left by an interrupted export", path)
    return removed


def publish(
    base: str | Path,
    write: Callable[[Path, int], None],
    gate: Callable[[Path], T],
    version: int | None = None,
) -> tuple[int, Path, T]:
    """Write a candidate with `write(tmp, N)`, check it with `gate(tmp)`, rename it to `<base>/<N>`.

    Any exception from `write` or `gate` removes the candidate and propagates: nothing is
    published. An explicit `version` never overwrites an existing one. If another export takes N
    meanwhile, the candidate is written again under the next free number (`write` is idempotent).
    """
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(base)
    if version is not None:
        if version < 0:
            raise ValueError(f"version must be a non-negative integer; received {version}")
        if (base / str(version)).exists():
            raise VersionExistsError(
                f"{base / str(version)} already exists; versions are never "
                "overwritten (omit --version to publish the next one)"
            )
    # The umask's mode (normally 0755), not mkdtemp's 0700: the renamed directory is the version,
    # and TF Serving reads it as another user.
    tmp = Path(fsutil.make_temp_dir(base, prefix=f"{TMP_PREFIX}{os.getpid()}-"))
    try:
        number = version if version is not None else next_version(base)
        write(tmp, number)
        report = gate(tmp)
        while (base / str(number)).exists():
            if version is not None:
                raise VersionExistsError(
                    f"{base / str(number)} appeared while exporting; not overwritten"
                )
            number += 1  # another export published first; take the next number
            write(tmp, number)
        fsutil.fsync_tree(tmp)
        target = base / str(number)
        os.rename(tmp, target)
        fsutil.fsync_dir(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return number, target, report
