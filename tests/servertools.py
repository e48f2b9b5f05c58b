"""Helpers for tests that run the local TF-Serving-compatible server (importable by any test)."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

LABELS = {"stable": 1, "canary": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=60.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def copy_version(exported_dir: Path, base: Path, version: int) -> Path:
    """Publish a copy of an exported version as TF Serving sees publishing: temp dir, rename."""
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-export-copy-{version}"
    shutil.copytree(exported_dir, tmp)
    target = base / str(version)
    tmp.rename(target)
    return target


def two_version_config(path: Path, model: str, base: Path, labels=LABELS) -> Path:
    """A ModelServerConfig serving versions 1 and 2 of `model`, with version labels."""
    label_lines = "".join(
        f'    version_labels {{ key: "{k}" value: {v} }}\n' for k, v in labels.items()
    )
    path.write_text(
        "model_config_list {\n  config {\n"
        f'    name: "{model}"\n    base_path: "{base}"\n    model_platform: "tensorflow"\n'
        "    model_version_policy { specific { versions: 1 versions: 2 } }\n"
        f"{label_lines}  }}\n}}\n"
    )
    return path


def start_server(argv: list[str]):
    """serving.server.ModelServer in this process, started (loaded and warmed up)."""
    from serving.config import resolve
    from serving.flags import parse_flags
    from serving.server import ModelServer

    return ModelServer(resolve(parse_flags(argv))).start()
