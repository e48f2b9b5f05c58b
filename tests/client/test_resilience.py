"""Crashes and secured endpoints: client SIGKILL + --resume, server restart mid-run, TLS + auth."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import signal
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from clienttools import client_env, count_lines, start_client
from servertools import free_port, wait_for
from testconfig import MODEL

from client.config import ScoreConfig
from client.scorer import run


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def all_uris(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("copy_*")}


@pytest.mark.slow  # `python -m client` / `python -m serving` subprocesses
def test_sigkill_then_resume_gives_every_input_exactly_once(target, many_images, tmp_path):
    out = tmp_path / "killed.jsonl"
    args = [str(many_images), "--target", target, "--model-name", MODEL, "--output", str(out),
            "--batch-size", "2", "--concurrency", "2", "--quiet"]  # fmt: skip
    process = start_client(args, tmp_path / "client.log")
    try:
        wait_for(lambda: count_lines(out) >= 40, timeout=90, what="40 rows before the kill")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    before = count_lines(out)
    assert 40 <= before < 600, "the kill must land mid-run"
    # simulate the worst moment of a kill: half of a row written, no newline
    with open(out, "ab") as f:
        f.write(b'{"uri": "' + str(many_images).encode() + b"/red/copy_99")
    from client.cli import main

    assert main([*args, "--resume"]) == 0
    rows = rows_of(out)  # every line parses: the torn one was dropped
    uris = [r["uri"] for r in rows]
    assert len(uris) == len(set(uris)) == 600
    assert set(uris) == all_uris(many_images)
    assert all("error" not in r for r in rows)


def start_server_process(port: int, model_base: Path, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the process
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            f"--port={port}",
            "--host=127.0.0.1",
            f"--model_name={MODEL}",
            f"--model_base_path={model_base}",
            "--file_system_poll_wait_seconds=0",
        ],  # fmt: skip
        env=client_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def serving(port: int) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow  # `python -m client` / `python -m serving` subprocesses
def test_server_killed_and_restarted_mid_run(served_base, many_images, tmp_path):
    """The default retry budget (60 s per batch) outlives a restart: the new server process takes
    ~10 s (5-30 s on a loaded 2-core machine) to import TensorFlow and load the model. Only
    --max-backoff is lowered (from 10 s), so that the test notices the server's return sooner."""
    port = free_port()
    server = start_server_process(port, served_base, tmp_path / "server.log")
    client = None
    try:
        wait_for(lambda: serving(port), timeout=120, what="the server subprocess")
        out = tmp_path / "restart.jsonl"
        client = start_client(
            [
                str(many_images),
                "--target",
                f"127.0.0.1:{port}",
                "--model-name",
                MODEL,
                "--output",
                str(out),
                "--batch-size",
                "1",
                "--concurrency",
                "2",
                "--max-backoff",
                "1",
                "--timeout",
                "5",
            ],  # fmt: skip
            tmp_path / "client.log",
        )
        wait_for(lambda: count_lines(out) >= 20, timeout=90, what="20 rows before the crash")
        server.send_signal(signal.SIGKILL)
        server.wait()
        killed = time.monotonic()
        at_crash = count_lines(out)
        assert at_crash < 600, "the server must die mid-run"
        server = start_server_process(port, served_base, tmp_path / "server.log")
        wait_for(lambda: serving(port), timeout=120, what="the restarted server")
        outage = time.monotonic() - killed
        log = tmp_path / "client.log"
        assert client.wait(timeout=120) == 0, f"outage {outage:.1f}s\n{log.read_text()[-3000:]}"
        summary = re.search(r"total (\d+) +scored (\d+) +failed (\d+)", log.read_text())
        assert summary and summary.groups() == ("600", "600", "0")
        assert int(re.search(r"\((\d+) retries\)", log.read_text()).group(1)) > 0
    finally:
        for process in (client, server):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    rows = rows_of(out)
    uris = [r["uri"] for r in rows]
    assert len(uris) == len(set(uris)) == 600 and set(uris) == all_uris(many_images)
    assert all("error" not in r and r["model_version"] == 2 for r in rows)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xfer-test-server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class AuthForwarder(grpc.GenericRpcHandler):
    """A TLS front door (like an ingress): checks the bearer token, forwards raw bytes upstream."""

    def __init__(self, upstream: grpc.Channel, token: str):
        self.upstream = upstream
        self.token = token
        self.seen: dict[str, int] = {}  # method's last path part -> calls let through

    def service(self, details):
        method = details.method
        metadata = dict(details.invocation_metadata)

        def forward(request: bytes, context):
            if metadata.get("authorization") != f"Bearer {self.token}":
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
            name = method.rsplit("/", 1)[-1]
            self.seen[name] = self.seen.get(name, 0) + 1
            call = self.upstream.unary_unary(method)
            try:
                return call(request, timeout=context.time_remaining())
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details())

        return grpc.unary_unary_rpc_method_handler(forward)


def test_tls_with_self_signed_certificate_and_auth_header(target, good_images, tmp_path):
    cert, key = self_signed(tmp_path)
    upstream = grpc.insecure_channel(target)
    handler = AuthForwarder(upstream, "s3cret")
    proxy = grpc.server(futures.ThreadPoolExecutor(4), handlers=[handler])
    port = proxy.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    )
    proxy.start()
    try:
        inputs = [str(p) for p in good_images[:12]]
        out = tmp_path / "tls.jsonl"
        config = ScoreConfig(inputs=inputs, target=[f"127.0.0.1:{port}"], model_name=MODEL,
                             output=str(out), root_certs=str(cert), batch_size=5,
                             auth_header=["Authorization: Bearer s3cret"], quiet=True)  # fmt: skip
        summary = run(config)
        # 3 Predict calls (12 images, batches of 5) and the client's GetModelMetadata (which
        # outputs the model has), every one through the token check
        assert summary.scored == 12 and handler.seen.get("Predict") == 3, handler.seen
        assert set(handler.seen) <= {"Predict", "GetModelMetadata"}, handler.seen
        assert {r["uri"] for r in rows_of(out)} == set(inputs)
        # without the token the proxy refuses: the run stops, nothing is written
        from client.scorer import ScoringAborted

        with pytest.raises(ScoringAborted, match="UNAUTHENTICATED"):
            run(config.replace(auth_header=[], output=str(tmp_path / "noauth.jsonl")))
    finally:
        proxy.stop(0)
        upstream.close()


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_an_untrusted_certificate_or_wrong_name_stops_at_once(
    good_images, tmp_path, capsys, protocol
):
    """A TLS handshake that fails is a configuration error: one message naming the target and
    the flags to check, exit 2, no rows, and no retrying for the budget (60 s by default)."""
    cert, key = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca, _ = self_signed(tmp_path / "other")
    if protocol == "grpc":
        server = grpc.server(futures.ThreadPoolExecutor(2))
        port = server.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        )
        server.start()
        stop = lambda: server.stop(0)  # noqa: E731
    else:
        stop, port = https_server(cert, key)
    from client.cli import main

    inputs = [str(p) for p in good_images[:8]]
    common = [*inputs, "--target", f"127.0.0.1:{port}", "--model-name", MODEL, "--quiet",
              "--protocol", protocol, "--batch-size", "2"]  # fmt: skip
    cases = [["--root-certs", str(other_ca)]]
    if protocol == "grpc":  # the right CA, the wrong name (REST checks the name against the URL)
        cases.append(["--root-certs", str(cert), "--tls-server-name", "wrong.example"])
    try:
        for case in cases:
            out = tmp_path / f"{case[-1].replace('/', '_')}.jsonl"
            started = time.monotonic()
            code = main([*common, *case, "--output", str(out)])
            err = capsys.readouterr().err
            errors = [line for line in err.splitlines() if "xfer-score" in line]
            assert code == 2, err
            assert len(errors) == 1 and "error: the TLS handshake failed" in errors[0], errors
            assert f"127.0.0.1:{port}" in errors[0] and "--root-certs" in errors[0]
            assert out.read_text() == ""
            assert time.monotonic() - started < 30  # well under the 60 s retry budget
    finally:
        stop()


def https_server(cert: Path, key: Path):
    """An HTTPS server on a free port (its handshakes are what the REST test needs)."""
    import http.server
    import ssl
    import threading

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def stop():
        httpd.shutdown()
        httpd.server_close()

    return stop, httpd.server_address[1]
