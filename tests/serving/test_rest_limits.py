"""Issue 14.8: the REST server under concurrency and bad bodies.

The HTTP side of `serving.http_server.RestServer` is drilled here with a stand-in for the REST
API (no
model: what is tested is connections, bodies and errors), with raw sockets for what no HTTP
library would send: lengths that lie, requests that stall, clients that vanish.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import struct
import threading
import time
from collections import Counter

import pytest

from serving.http_server import RestServer


class StandIn:
    """RestApi's interface: (method, path, body) -> (status, content type, payload)."""

    def __init__(self):
        self.released = threading.Event()
        self.released.set()
        self.calls = 0

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        self.calls += 1
        if path == "/big":  # held until the test lets it answer, then 16 MB
            self.released.wait(30)
            return 200, "application/octet-stream", b"x" * (16 << 20)
        if path == "/model":
            time.sleep(0.005)  # a little work, as a model would do
        answer = {"method": method, "path": path, "length": len(body)}
        return 200, "application/json", json.dumps(answer).encode()


@pytest.fixture
def serve():
    servers: list[RestServer] = []

    def start(**options) -> tuple[RestServer, StandIn]:
        api = StandIn()
        server = RestServer(api, "127.0.0.1", 0, 8, **options)
        server.start()
        servers.append(server)
        return server, api

    yield start
    for server in servers:
        server.stop()


def exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send raw bytes, read until the server closes: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    return status, headers, body


def post(path: str, body: bytes = b"", *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_error(status: int, headers: dict, body: bytes) -> str:
    assert headers["content-type"] == "application/json", headers
    assert int(headers["content-length"]) == len(body)
    return json.loads(body)["error"]


@pytest.fixture
def server_log(caplog, capfd):
    """Everything the server logs, and what reached stderr (where tracebacks used to go)."""
    caplog.set_level(logging.DEBUG, logger="serving.http_server")

    def read() -> tuple[list[logging.LogRecord], str]:
        return list(caplog.records), capfd.readouterr().err

    return read


def test_32_concurrent_clients_get_no_connection_resets(serve):
    """Each of 32 clients opens a new connection per request, for 5 s: every request answered."""
    server, _ = serve()
    outcomes: Counter = Counter()
    lock = threading.Lock()
    start = threading.Barrier(33)
    deadline = [0.0]

    def client() -> None:
        start.wait()
        while time.monotonic() < deadline[0]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                conn.request("POST", "/model", body=b'{"instances": [1]}')
                response = conn.getresponse()
                response.read()
                kind = "ok" if response.status == 200 else f"http_{response.status}"
            except ConnectionResetError:
                kind = "reset"
            except Exception as exc:  # noqa: BLE001 - every failure is counted by kind
                kind = type(exc).__name__
            finally:
                conn.close()
            with lock:
                outcomes[kind] += 1

    threads = [threading.Thread(target=client) for _ in range(32)]
    for thread in threads:
        thread.start()
    deadline[0] = time.monotonic() + 5
    start.wait()
    for thread in threads:
        thread.join()
    assert outcomes["ok"] > 32 and set(outcomes) == {"ok"}, dict(outcomes)


@pytest.mark.parametrize(
    "length",
    ["-1", "abc", "1e3", "0x10", "12 34", "+5", "99999999999999999999999"],
    ids=["negative", "text", "float", "hex", "two-numbers", "plus", "absurd"],
)
def test_a_bad_content_length_is_a_400_with_a_json_error(serve, server_log, length):
    server, api = serve()
    status, headers, body = exchange(server.port, post("/v1/x", b"{}", f"Content-Length: {length}"))
    assert status == 400
    assert "Content-Length" in json_error(status, headers, body)
    assert headers["connection"] == "close"
    assert api.calls == 0
    records, stderr = server_log()
    assert "Traceback" not in stderr and all(r.levelno < logging.WARNING for r in records)


def test_conflicting_content_lengths_are_a_400(serve):
    server, _ = serve()
    request = post("/v1/x", b"{}", "Content-Length: 2", "Content-Length: 20")
    status, headers, body = exchange(server.port, request)
    assert status == 400 and "Content-Length" in json_error(status, headers, body)


def test_a_body_over_the_limit_is_a_413_with_a_json_error(serve, server_log):
    """Sent whole (the answer is read after 256 KB were sent: not lost to a reset), announced
    with Expect: 100-continue (refused before the body is sent), or just announced."""
    server, api = serve(max_body_bytes=1024)
    big = b"x" * (256 << 10)
    sent_whole = post("/v1/x", big, f"Content-Length: {len(big)}")
    expect = post("/v1/x", b"", f"Content-Length: {len(big)}", "Expect: 100-continue")
    announced = post("/v1/x", b"", "Content-Length: 1025")
    for request in (sent_whole, expect, announced):
        status, headers, body = exchange(server.port, request)
        assert status == 413, (status, body[:200])
        assert "1024" in json_error(status, headers, body)
        assert headers["connection"] == "close"
    assert api.calls == 0
    status, headers, body = exchange(
        server.port, post("/v1/x", b"y" * 1024, "Content-Length: 1024", "Connection: close")
    )
    assert status == 200 and json.loads(body)["length"] == 1024  # the limit itself is allowed
    records, stderr = server_log()
    assert "Traceback" not in stderr and all(r.levelno < logging.WARNING for r in records)


def test_a_chunked_body_is_refused_with_411(serve):
    server, api = serve()
    request = post("/v1/x", b"2\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked")
    status, headers, body = exchange(server.port, request)
    assert status == 411 and "Content-Length" in json_error(status, headers, body)
    assert api.calls == 0


def test_http_servers_own_errors_are_json_too(serve):
    server, _ = serve()
    status, headers, body = exchange(server.port, b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 400 and "Bad request syntax" in json_error(status, headers, body)
    status, headers, body = exchange(server.port, b"DELETE /v1/x HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 501 and "DELETE" in json_error(status, headers, body)


def _wait_closed(sock: socket.socket, within: float) -> tuple[float, bytes]:
    """(seconds until the server closed the connection, what it sent before)."""
    started = time.monotonic()
    sock.settimeout(within)
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    return time.monotonic() - started, raw


def test_a_client_that_stalls_is_dropped_after_the_read_timeout(serve, server_log):
    """Headers cut short, or a body cut short: the connection (and its thread) goes after the
    read timeout; a stalled body is answered 408 first."""
    server, api = serve(read_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port)) as half_headers:
        half_headers.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: test\r\n")
        with socket.create_connection(("127.0.0.1", server.port)) as half_body:
            half_body.sendall(post("/v1/models/m:predict", b'{"instances"', "Content-Length: 100"))
            waited, raw = _wait_closed(half_headers, within=5)
            assert raw == b"" and waited < 3
            waited, raw = _wait_closed(half_body, within=5)
    assert waited < 3
    status_line, _, body = raw.partition(b"\r\n")
    assert b" 408 " in status_line and b'"error"' in body
    assert api.calls == 0
    deadline = time.monotonic() + 5
    while server.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.connections == 0
    records, stderr = server_log()
    assert "Traceback" not in stderr and all(r.levelno < logging.WARNING for r in records)


def test_an_idle_keepalive_connection_is_closed_after_the_read_timeout(serve):
    server, _ = serve(read_timeout=0.5)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/v1/models/m")
    assert conn.getresponse().read()
    waited, raw = _wait_closed(conn.sock, within=5)
    assert raw == b"" and waited < 3
    conn.close()


def test_a_client_gone_mid_response_is_one_debug_line(serve, server_log):
    server, api = serve()
    api.released.clear()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
    deadline = time.monotonic() + 10
    while api.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset, as a killed client sends
    time.sleep(0.2)
    api.released.set()  # the server now writes 16 MB to a connection that is gone
    deadline = time.monotonic() + 10
    while server.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.connections == 0
    records, stderr = server_log()
    assert "Traceback" not in stderr
    assert [r.levelno for r in records if r.levelno >= logging.INFO] == []
    gone = [r for r in records if "went away" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.DEBUG, [r.getMessage() for r in records]
    assert all(not r.exc_info for r in records)


def test_the_limits_are_xfer_serve_flags(tmp_path):
    """--rest_api_max_body_bytes and --rest_api_read_timeout_in_ms reach the REST server (a
    server with no model yet: nothing is loaded), and a limit must be positive."""
    from servertools import free_port, start_server

    from serving.config import ConfigError, resolve
    from serving.flags import parse_flags

    defaults = parse_flags(["--model_base_path=/m"])
    assert (defaults.rest_api_max_body_bytes, defaults.rest_api_read_timeout_in_ms) == (
        64 << 20,
        50_000,
    )
    assert (defaults.rest_api_listen_backlog, defaults.rest_api_max_connections) == (1024, 256)
    for flag in ("max_body_bytes", "read_timeout_in_ms", "listen_backlog", "max_connections"):
        with pytest.raises(ConfigError, match=f"--rest_api_{flag} must be positive"):
            resolve(parse_flags(["--model_base_path=/m", f"--rest_api_{flag}=0"]))

    server = start_server(
        [
            f"--port={free_port()}",
            f"--rest_api_port={free_port()}",
            "--host=127.0.0.1",
            f"--model_base_path={tmp_path}",
            "--rest_api_max_body_bytes=100",
            "--rest-api-read-timeout-in-ms=500",
            "--rest_api_listen_backlog=64",
            "--rest_api_max_connections=4",
        ]
    )
    try:
        too_big = post("/v1/x", b"", "Content-Length: 101")
        status, headers, body = exchange(server.rest_port, too_big)
        assert status == 413 and "100 bytes" in json_error(status, headers, body)
        with socket.create_connection(("127.0.0.1", server.rest_port)) as stalled:
            stalled.sendall(b"GET /v1/models/default HTTP/1.1\r\n")
            waited, raw = _wait_closed(stalled, within=5)
        assert raw == b"" and waited < 3
    finally:
        server.stop(0)
