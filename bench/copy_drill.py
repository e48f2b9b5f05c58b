"""A version copied in place, slowly, while the server polls (issue 14, point 7).

Starts xfer-serve (file-system poll every second) on an empty base path, then copies a version
into `<base>/1` as `cp -r` or `rsync` would, in place and not atomically: the small files first,
then variables/ in chunks over `--seconds`. The server sees the version half-written and fails to
load it; the drill reports how many loads the server tried (its log's "loading" lines), how long
after the copy ended the version was AVAILABLE (or that it never was), and the status messages it
showed on the way.

    python bench/copy_drill.py --version_dir models/flowers/3 [--seconds 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = "drill"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(port: int) -> tuple[str, str]:
    """(state, error message) of version 1, or ("", "") while the server has none."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", f"/v1/models/{NAME}")
        doc = json.loads(conn.getresponse().read())
        conn.close()
    except (OSError, ValueError):
        return "", ""
    for entry in doc.get("model_version_status", []):
        if entry.get("version") == "1":
            return entry["state"], entry.get("status", {}).get("error_message", "")
    return "", ""


def slow_copy(source: Path, target: Path, seconds: float) -> None:
    """Everything but variables/ at once, then variables/ in 20 chunks spread over `seconds`."""
    target.mkdir()
    for entry in sorted(source.iterdir()):
        if entry.name == "variables":
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name)
        else:
            shutil.copy2(entry, target / entry.name)
    variables = target / "variables"
    variables.mkdir()
    files = sorted((source / "variables").iterdir())
    total = sum(f.stat().st_size for f in files)
    chunk = max(1, total // 20)
    for f in files:
        with f.open("rb") as src, (variables / f.name).open("wb") as dst:
            while block := src.read(chunk):
                dst.write(block)
                dst.flush()
                time.sleep(seconds / 20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version_dir", type=Path, required=True, help="a version to copy")
    parser.add_argument("--seconds", type=float, default=5.0, help="time the copy of variables/")
    parser.add_argument("--wait", type=float, default=60.0, help="then wait this long at most")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="xfer-copy-drill-")) / NAME
    base.mkdir()
    rest_port = free_port()
    log_path = base.parent / "server.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            f"--port={free_port()}",
            f"--rest_api_port={rest_port}",
            "--host=127.0.0.1",
            f"--model_name={NAME}",
            f"--model_base_path={base}",
            "--file_system_poll_wait_seconds=1",
        ],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    seen: list[tuple[float, str, str]] = []
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=5)
                conn.request("GET", f"/v1/models/{NAME}")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                time.sleep(0.2)
        started = time.monotonic()
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                state, message = status(rest_port)
                if state and (not seen or seen[-1][1:] != (state, message)):
                    seen.append((round(time.monotonic() - started, 2), state, message))
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        slow_copy(args.version_dir, base / "1", args.seconds)
        copied = time.monotonic()
        while time.monotonic() - copied < args.wait:
            if seen and seen[-1][1] == "AVAILABLE":
                break
            time.sleep(0.1)
        stop.set()
        watcher.join()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    log = log_path.read_text(errors="replace")
    available = next((t for t, state, _ in seen if state == "AVAILABLE"), None)
    result = {
        "copy_seconds": round(copied - started, 2),
        "loads_tried": log.count(f"loading {NAME} version 1 "),
        "available_after_copy_s": None
        if available is None
        else round(available - (copied - started), 2),
        "final_state": seen[-1][1] if seen else None,
        "statuses": [{"t": t, "state": s, "error": m[:160]} for t, s, m in seen],
    }
    print(json.dumps(result, indent=1))
    shutil.rmtree(base.parent, ignore_errors=True)
    return 0 if available is not None else 1


if __name__ == "__main__":
    sys.exit(main())
