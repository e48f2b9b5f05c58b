"""REST under load: N concurrent clients for S seconds against the local server (issue 14, point 8).

Each client loops: connect, POST one image to `:predict` (or GET the model status), read the
answer. By default every request opens a new connection, as curl or a script without a session
does, which is what fills a listen backlog; `--keepalive` reuses one connection per client.

    python bench/rest_drill.py --model_base_path models/flowers          # starts xfer-serve
    python bench/rest_drill.py --url http://127.0.0.1:8501 --model_name flowers

`--bad_clients N` adds N clients that cycle through what a broken or hostile client sends, each
on a new connection: a negative, a non-numeric and an absurd Content-Length (400 expected), a
length over the server's body limit (413), a request reset by the client before it reads the
answer, and headers cut short then abandoned.

Prints one JSON object: requests, ok, failures by kind (`reset` is ECONNRESET, `refused`,
`timeout`, `disconnected` a connection closed without an answer, `http_<status>`), connects that
took >= 1 s (a SYN dropped by a full backlog is retransmitted after 1 s), latency percentiles,
the bad clients' answers and, when the drill started the server, its peak thread count and the
tracebacks in its log. Exit status 1 if any good request failed or a bad one got an unexpected
answer.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_image() -> bytes:
    """A 96x96 PNG (a grey gradient), made here so the drill needs no data."""
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("L", (96, 96), bytes((x + y) % 256 for y in range(96) for x in range(96))).save(
        buf, "PNG"
    )
    return buf.getvalue()


def start_server(
    base: str, name: str, extra: list[str], log_path: Path, grpc_port: int = 0, root: Path = ROOT
) -> tuple[subprocess.Popen, str]:
    """`python -m serving` of the checkout `root` on free ports (gRPC on `grpc_port` if given),
    once a version is AVAILABLE; returns the process and the REST URL."""
    rest_port = free_port()
    argv = [
        sys.executable,
        "-m",
        "serving",
        f"--port={grpc_port or free_port()}",
        f"--rest_api_port={rest_port}",
        "--host=127.0.0.1",
        f"--model_name={name}",
        f"--model_base_path={os.path.abspath(base)}",
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{rest_port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=5)
            conn.request("GET", f"/v1/models/{name}")
            if b"AVAILABLE" in conn.getresponse().read():
                conn.close()
                return proc, url
            conn.close()
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not come up within 300 s")


def threads_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def classify(exc: BaseException) -> str:
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken_pipe"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "disconnected"
    return type(exc).__name__


BAD_REQUESTS = [  # (what, Content-Length header, body sent, expected status)
    ("negative_length", "-1", b"{}", 400),
    ("text_length", "abc", b"{}", 400),
    ("absurd_length", "9" * 30, b"{}", 400),
    ("over_the_limit", str(1 << 40), b"", 413),
]


def bad_client(host: str, port: int, path: str, body: bytes, stop: float, seen: Counter, lock):
    """Cycle through broken requests until `stop`; count (what, answer) pairs."""
    cases = [*BAD_REQUESTS, ("reset_before_answer", None, body, None), ("half_headers", None)]
    i = 0
    while time.monotonic() < stop:
        case = cases[i % len(cases)]
        i += 1
        answer = "none"
        try:
            with socket.create_connection((host, port), timeout=30) as sock:
                if case[0] == "half_headers":
                    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: drill\r\n".encode())
                    time.sleep(0.1)
                elif case[0] == "reset_before_answer":
                    head = f"POST {path} HTTP/1.1\r\nHost: drill\r\nContent-Length: {len(body)}"
                    sock.sendall(head.encode() + b"\r\n\r\n" + body)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    what, length, data, expected = case
                    head = f"POST {path} HTTP/1.1\r\nHost: drill\r\nContent-Length: {length}"
                    sock.sendall(head.encode() + b"\r\n\r\n" + data)
                    raw = b""
                    while chunk := sock.recv(65536):
                        raw += chunk
                    status = raw.split(b" ", 2)[1].decode() if raw.startswith(b"HTTP/") else "none"
                    is_json = b"application/json" in raw.partition(b"\r\n\r\n")[0].lower()
                    answer = status if is_json else f"{status}_not_json"
                    answer = "expected" if answer == str(expected) else f"got_{answer}"
        except Exception as exc:  # noqa: BLE001 - counted by kind
            answer = classify(exc)
        with lock:
            seen[f"{case[0]}:{answer}"] += 1


def drill(
    url: str,
    name: str,
    clients: int,
    seconds: float,
    keepalive: bool,
    request: str,
    image: bytes,
    server_pid: int | None = None,
    bad_clients: int = 0,
) -> dict:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    if request == "predict":
        method, path = "POST", f"/v1/models/{name}:predict"
        body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()
        headers = {"Content-Type": "application/json"}
    else:
        method, path, body, headers = "GET", f"/v1/models/{name}", None, {}
    outcomes: Counter = Counter()
    latencies: list[float] = []
    slow_connects = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    start_gate = threading.Barrier(clients + 1)

    def client() -> None:
        conn = None
        start_gate.wait()
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=60)
                    conn.connect()
                    if time.perf_counter() - started >= 1.0:
                        with lock:
                            slow_connects[0] += 1
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                kind = "ok" if response.status == 200 else f"http_{response.status}"
                if not keepalive or response.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # noqa: BLE001 - every failure is counted by kind
                kind = classify(exc)
                if conn is not None:
                    conn.close()
                    conn = None
            elapsed = time.perf_counter() - started
            with lock:
                outcomes[kind] += 1
                if kind == "ok":
                    latencies.append(elapsed)
        if conn is not None:
            conn.close()

    bad: Counter = Counter()
    predict_body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for _ in range(bad_clients):
        args = (host, port, f"/v1/models/{name}:predict", predict_body, stop, bad, lock)
        threads.append(threading.Thread(target=bad_client, args=args, daemon=True))
        threads[-1].start()
    peak_threads = [threads_of(server_pid) if server_pid else 0]
    started = time.monotonic()
    start_gate.wait()
    while any(t.is_alive() for t in threads):
        if server_pid:
            peak_threads[0] = max(peak_threads[0], threads_of(server_pid))
        time.sleep(0.2)
    wall = time.monotonic() - started
    latencies.sort()

    def pct(q: float) -> float | None:
        return round(latencies[int(q * (len(latencies) - 1))] * 1000, 1) if latencies else None

    total = sum(outcomes.values())
    result = {
        "clients": clients,
        "seconds": round(wall, 1),
        "request": request,
        "keepalive": keepalive,
        "requests": total,
        "ok": outcomes["ok"],
        "failures": {k: v for k, v in sorted(outcomes.items()) if k != "ok"},
        "resets": outcomes["reset"] + outcomes["broken_pipe"],
        "slow_connects": slow_connects[0],
        "requests_per_s": round(total / wall, 1),
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
    }
    if bad_clients:
        result["bad_clients"] = bad_clients
        result["bad_requests"] = dict(sorted(bad.items()))
    if server_pid:
        result["server_peak_threads"] = peak_threads[0]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model_base_path", help="start xfer-serve on this model base path")
    target.add_argument("--url", help="drill a running server, e.g. http://127.0.0.1:8501")
    parser.add_argument("--model_name", help="default: the base path's last component")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--keepalive", action="store_true", help="one connection per client")
    parser.add_argument("--request", choices=("predict", "status"), default="predict")
    parser.add_argument("--image", type=Path, help="image to send (default: a 96x96 PNG)")
    parser.add_argument("--bad_clients", type=int, default=0, help="clients of broken requests")
    parser.add_argument("--server_log", type=Path, help="keep the started server's log here")
    parser.add_argument(
        "--server_arg", action="append", default=[], help="extra xfer-serve flag (repeatable)"
    )
    args = parser.parse_args(argv)
    name = args.model_name or Path(args.model_base_path or "").name
    if not name:
        parser.error("--model_name is required with --url")
    image = args.image.read_bytes() if args.image else default_image()
    proc = None
    url = args.url
    log_path = args.server_log or Path(tempfile.mkstemp(prefix="rest-drill-", suffix=".log")[1])
    if args.model_base_path:
        proc, url = start_server(args.model_base_path, name, args.server_arg, log_path)
    try:
        result = drill(
            url,
            name,
            args.clients,
            args.seconds,
            args.keepalive,
            args.request,
            image,
            proc.pid if proc else None,
            args.bad_clients,
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    if proc is not None:
        text = log_path.read_text(errors="replace")
        result["server_log_tracebacks"] = text.count("Traceback (most recent call last)")
    if not args.server_log:
        log_path.unlink(missing_ok=True)
    print(json.dumps(result, indent=1))
    unexpected = [k for k in result.get("bad_requests", {}) if k.split(":")[1] != "expected"]
    answered = {"half_headers:none", "reset_before_answer:none"}
    failed = result["requests"] != result["ok"] or set(unexpected) - answered
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
