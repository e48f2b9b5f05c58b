"""Helpers for client tests that run `python -m client` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def client_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def start_client(args: list[str], log_path: Path) -> subprocess.Popen:
    """`python -m client ...` in a subprocess (so that it can be SIGKILLed)."""
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the process for its life
    return subprocess.Popen(
        [sys.executable, "-m", "client", *args],
        cwd=REPO,
        env=client_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0
