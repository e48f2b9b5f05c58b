"""Run Python as another uid, to check what a user other than the exporter can read.

TF Serving's image runs as uid 10001 (serving/Dockerfile); a model exported by anyone else must be
readable by it. Only root can switch users, so the tests using this skip elsewhere and say why.

The child starts as root, imports what it needs, then drops to the other uid before running the
code: the interpreter and its standard library may live where that uid cannot read them (e.g. a
pyenv under /root, mode 0700), so nothing may be imported after the switch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

OTHER_UID = 10001  # serving/Dockerfile: USER 10001

_BOOTSTRAP = """
import json, os, sys
{preload}
uid = int(sys.argv[1])
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
assert os.geteuid() == uid and os.getegid() == uid
{code}
"""


def skip_unless_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(
            f"needs root to run a reader as another uid (uid {OTHER_UID}, TF Serving's); "
            f"running as uid {os.geteuid()}"
        )


def run_as(uid: int, code: str, *args: str, preload: str = "", timeout: float = 300) -> dict:
    """Run `code` as `uid` (after `preload` ran as root); it prints one JSON object, returned."""
    script = _BOOTSTRAP.format(preload=preload, code=code)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", HOME=tempfile.gettempdir())
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", script, str(uid), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is 0700: root only)."""
    path = Path(tempfile.mkdtemp(prefix="xfer-shared-"))
    try:
        path.chmod(0o755)
        for parent in path.parents:
            if not parent.stat().st_mode & stat.S_IXOTH:
                pytest.skip(f"{parent} is not searchable by other users; set TMPDIR elsewhere")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


READ_EVERYTHING = """
failures, read = [], 0
for top in sys.argv[2:]:
    for dirpath, dirnames, filenames in os.walk(top, onerror=lambda e: failures.append(str(e))):
        for name in filenames:
            try:
                with open(os.path.join(dirpath, name), "rb") as f:
                    while f.read(1 << 20):
                        pass
                read += 1
            except OSError as exc:
                failures.append(str(exc))
print(json.dumps({"read": read, "failures": failures}))
"""


def files_under(*tops: Path) -> int:
    return sum(len(files) for top in tops for _, _, files in os.walk(top))


def read_everything_as(uid: int, *tops: Path) -> dict:
    """Open and read every file under `tops` as `uid`: {"read": count, "failures": [...]}."""
    return run_as(uid, READ_EVERYTHING, *map(str, tops))
