"""Start model servers as TF Serving's own test harness does (tensorflow_model_server_test_base.py
RunServer), against the local server or a real `tensorflow_model_server`.

Upstream's cases start servers with their own flags (a config file, a poll period, channel
arguments, a bad model), so the option that points the port at the real thing names the binary
to run, not an address: `--tfs-model-server /usr/bin/tensorflow_model_server` (or
XFER_TFS_MODEL_SERVER; a command with arguments, e.g. a `docker run ...` wrapper, works too).
Without it the servers are the local one: in this process (serving.server.ModelServer from the
same flags, as `xfer-serve` parses them) when a case needs a running server, and
`python -m serving` as a process when a case checks how start-up fails (exit code, stderr).

Every server gets RunServer's flags: --port, --rest_api_port, --rest_api_timeout_in_ms=5000,
--grpc_socket_path and --grpc_channel_arguments=...,grpc.so_reuseaddr=1. Servers are shared by
their flags for the whole session, as upstream's `model_servers_dict`, and stopped at its end.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc

RPC_TIMEOUT = 20.0
HTTP_REST_TIMEOUT_MS = 5000
WAIT_FOR_SERVER_READY_SECS = 60
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A started server: its gRPC and REST addresses (host:port) and Unix socket."""

    grpc: str
    rest: str
    socket_path: str
    stop: object  # () -> None
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


@dataclass
class Launcher:
    """How servers are started: `command` is the real binary, or None for the local server."""

    command: list[str] | None
    workdir: Path
    servers: dict = field(default_factory=dict)
    _count: int = 0

    @property
    def local(self) -> bool:
        return self.command is None

    def _flags(self, args: list[str], channel_args: str) -> tuple[list[str], str, str, str]:
        self._count += 1
        port, rest_port = free_port(), free_port()
        socket_path = str(self.workdir / f"tf-serving-{self._count}.sock")
        channel = ",".join(a for a in (channel_args, "grpc.so_reuseaddr=1") if a)
        flags = [
            f"--port={port}",
            f"--rest_api_port={rest_port}",
            f"--rest_api_timeout_in_ms={HTTP_REST_TIMEOUT_MS}",
            f"--grpc_socket_path={socket_path}",
            *args,
            f"--grpc_channel_arguments={channel}",
        ]
        return flags, f"localhost:{port}", f"localhost:{rest_port}", socket_path

    def run_server(
        self,
        args: list[str],
        *,
        channel_args: str = "",
        local_args: tuple[str, ...] = (),
        wait_for_server_ready: bool = True,
    ) -> Server:
        """RunServer: one server per distinct set of flags, kept for the session.

        `local_args` are flags only the local server takes (e.g. --allow_reload_config_requests,
        which TF Serving does not need: it always accepts HandleReloadConfigRequest)."""
        key = (tuple(args), channel_args, tuple(local_args), wait_for_server_ready)
        if key in self.servers:
            return self.servers[key]
        flags, grpc_address, rest_address, socket_path = self._flags(args, channel_args)
        if self.local:
            server = self._start_local([*flags, *local_args], grpc_address, rest_address)
            server.socket_path = socket_path
        else:
            server = self._start_process(flags, grpc_address, rest_address, socket_path)
            if wait_for_server_ready:
                wait_for_server_ready_at(grpc_address, server)
        self.servers[key] = server
        return server

    def _start_local(self, flags, grpc_address, rest_address) -> Server:
        from serving.config import resolve
        from serving.flags import parse_flags
        from serving.server import ModelServer

        server = ModelServer(resolve(parse_flags(flags))).start()
        return Server(grpc_address, rest_address, "", lambda: server.stop(0))

    def _start_process(self, flags, grpc_address, rest_address, socket_path) -> Server:
        log_path = self.workdir / f"server-{self._count}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*self.command, *flags], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )

        def stop():
            process.kill()
            process.wait(timeout=30)

        return Server(grpc_address, rest_address, socket_path, stop, process, log_path)

    def run_to_exit(
        self, args: list[str], timeout: float = 180.0, cwd: Path | None = None
    ) -> tuple[int | None, str]:
        """Start a server that is expected to refuse to start: (exit code, stderr).

        A server still running after `timeout` is killed and reported with exit code None."""
        flags, *_ = self._flags(args, "")
        command = self.command or [sys.executable, "-m", "serving"]
        env = dict(os.environ)
        if self.local:
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(REPO), env.get("PYTHONPATH", "")])
            )
        process = subprocess.Popen(
            [*command, *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=cwd or self.workdir,
            env=env,
        )
        try:
            _, stderr = process.communicate(timeout=timeout)
            code = process.returncode
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
            code = None
        return code, stderr.decode("utf-8", "replace")

    def stop_all(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()


def wait_for_server_ready_at(address: str, server: Server) -> None:
    """WaitForServerReady: a Predict on a missing model answers `Servable ...` once loaded."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "intentionally_missing_model"
    deadline = time.monotonic() + WAIT_FOR_SERVER_READY_SECS
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}: {server.log()}")
        with grpc.insecure_channel(address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            try:
                stub.Predict(request, timeout=5.0)
            except grpc.RpcError as error:
                if "Servable" in (error.details() or ""):
                    return
        time.sleep(0.5)
    raise AssertionError(f"server at {address} not ready after {WAIT_FOR_SERVER_READY_SECS} s")


def external_command(text: str | None) -> list[str] | None:
    return shlex.split(text) if text else None


# ---------------------------------------------------------------- REST


def call_rest(url: str, req=None) -> bytes:
    """CallREST: the body of a successful call (an HTTP error raises)."""
    data = json.dumps(req).encode("utf-8") if req is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as resp:
        return resp.read()


def http(method: str, url: str, body: str | bytes = b"") -> tuple[int, str, dict]:
    """(HTTP status, content type, parsed JSON body) for a raw request; errors returned."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data if method == "POST" else None, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, ctype, payload = resp.status, resp.headers.get("Content-Type"), resp.read()
    except urllib.error.HTTPError as exc:
        status, ctype, payload = exc.code, exc.headers.get("Content-Type"), exc.read()
    try:
        parsed = json.loads(payload) if payload else {}
    except ValueError:
        parsed = {"<non-JSON body>": payload.decode("utf-8", "replace")}
    return status, ctype or "", parsed


def sorted_object(obj):
    """SortedObject: JSON with every list and object sorted, for order-free comparison."""
    if isinstance(obj, dict):
        return sorted((k, sorted_object(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return sorted((sorted_object(x) for x in obj), key=repr)
    return obj


# ---------------------------------------------------------------- the option


OPTION, ENV = "--tfs-model-server", "XFER_TFS_MODEL_SERVER"


def add_options(parser) -> None:
    parser.getgroup("xfer-tfserving", "TF Serving's own tests, ported (tests/tfserving)").addoption(
        OPTION,
        default=None,
        help="run the port against this tensorflow_model_server command instead of the local "
        f"server [env {ENV}]",
    )


def option(config) -> str | None:
    return config.getoption(OPTION.lstrip("-").replace("-", "_"), default=None) or (
        os.environ.get(ENV) or None
    )
