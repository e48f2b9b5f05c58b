"""Drill: the server is killed in the middle of an `xfer-score` run and comes back later.

    python scripts/restart_drill.py --model-base-path BASE --model-name NAME --images DIR \
        [--down-s 10] [--after-rows 40] [--batch-size 1] [--concurrency 1] [--resume] \
        [-- extra xfer-score flags]

Starts the local server (`python -m serving`) on a free port, scores DIR with `python -m client`
(its default retry flags unless given after `--`), SIGKILLs the server once --after-rows rows are
written, starts it again --down-s seconds later and waits for the client. Prints one JSON line:
the client's exit code and last stderr line, the rows written (scored, error rows, distinct URIs),
the measured outage (kill until the new server answers its health check) and the run's wall time.
With --resume, the same command is then run again with `--resume` and its figures follow.

It drills whatever code is on PYTHONPATH (this checkout by default), so the same script measures
an older commit: `git archive OLD | tar -x -C /tmp/old; PYTHONPATH=/tmp/old python ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    out = dict(os.environ)
    out.setdefault("PYTHONPATH", str(REPO))
    out.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return out


def serving(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"restart_drill: timed out waiting for {what}")
        time.sleep(0.05)


def start_server(port: int, args, log) -> subprocess.Popen:
    command = [sys.executable, "-m", "serving", f"--port={port}", "--host=127.0.0.1",
               f"--model_name={args.model_name}",
               f"--model_base_path={os.path.abspath(args.model_base_path)}",
               "--file_system_poll_wait_seconds=0"]  # fmt: skip
    return subprocess.Popen(command, env=env(), stdout=log, stderr=subprocess.STDOUT)


def lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def figures(rows: list[dict]) -> dict:
    return {
        "rows": len(rows),
        "error_rows": sum("error" in r for r in rows),
        "distinct_uris": len({r["uri"] for r in rows}),
    }


def client(command: list[str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the process
    return subprocess.Popen(command, env=env(), stdout=log, stderr=subprocess.STDOUT)


def last_line(path: Path) -> str:
    """The client's last line of its own (TensorFlow's and gRPC's C++ log lines left out)."""
    text = [
        line
        for line in path.read_text(errors="replace").splitlines()
        if line.strip() and line[:5] not in ("I0000", "W0000", "E0000") and "absl::" not in line
    ]
    return text[-1] if text else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--down-s", type=float, default=10.0)
    parser.add_argument("--after-rows", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    work = Path(tempfile.mkdtemp(prefix="restart-drill-"))
    out = work / "scored.jsonl"
    port = free_port()
    server_log = open(work / "server.log", "ab")  # noqa: SIM115
    server = start_server(port, args, server_log)
    score = None
    try:
        wait_until(lambda: serving(port), 300, "the server")
        command = [sys.executable, "-m", "client", args.images, "--target", f"127.0.0.1:{port}",
                   "--model-name", args.model_name, "--output", str(out), "--batch-size",
                   str(args.batch_size), "--concurrency", str(args.concurrency), "--quiet",
                   *extra]  # fmt: skip
        started = time.monotonic()
        score = client(command, work / "client.log")
        wait_until(lambda: len(lines(out)) >= args.after_rows, 300, f"{args.after_rows} rows")
        server.send_signal(signal.SIGKILL)
        server.wait()
        killed = time.monotonic()
        at_kill = len(lines(out))
        time.sleep(args.down_s)
        server = start_server(port, args, server_log)
        wait_until(lambda: serving(port), 300, "the restarted server")
        outage = time.monotonic() - killed
        code = score.wait(timeout=900)
        result = {
            "exit": code,
            "stderr": last_line(work / "client.log"),
            **figures(lines(out)),
            "rows_at_kill": at_kill,
            "outage_s": round(outage, 1),
            "wall_s": round(time.monotonic() - started, 1),
        }
        if args.resume:
            before = len(lines(out))
            again = subprocess.run([*command, "--resume"], env=env(), capture_output=True)
            rows = lines(out)
            result["resume"] = {
                "exit": again.returncode,
                "rows_added": len(rows) - before,
                **figures(rows),
            }
        result["work"] = str(work)
        print(json.dumps(result))
    finally:
        for process in (score, server):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
