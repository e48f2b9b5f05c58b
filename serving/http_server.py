"""The HTTP side of the REST API: a threaded HTTP server that bounds what clients can hold.

A listen backlog, a cap on connections (a thread each), a body size limit (413), a read timeout
(408), and malformed or chunked lengths refused (400, 411) before a body is read; every answer is
JSON. What a request means is RestApi's business (serving/rest.py): this module only moves bytes.
See docs/serving.md, "REST limits", for how this differs from TF Serving's libevent server.
"""

from __future__ import annotations

import logging
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from serving import json_response
from serving.flags import (
    REST_LISTEN_BACKLOG,
    REST_MAX_BODY_BYTES,
    REST_MAX_CONNECTIONS,
    REST_READ_TIMEOUT_MS,
)
from serving.rest import RestApi

log = logging.getLogger(__name__)

LINGER_SECONDS = 2.0  # after refusing a body: how long its rest is read and dropped
READ_CHUNK = 1 << 20  # bodies are read in chunks: a length that lies costs no memory
CONTENT_LENGTH = re.compile(r"[0-9]+")
MAX_LENGTH_DIGITS = 18  # below 2**63: any longer length is no length a client can send


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    """One connection (and its thread): requests read whole, then answered by RestApi.

    Every answer is JSON, http.server's own errors included. A body is refused before it is read
    when its length is malformed (400), over `max_body_bytes` (413) or chunked (411); then what
    the client still sends is read and dropped for up to LINGER_SECONDS, so that it reads the
    answer instead of a reset. `timeout` (the read timeout) closes a connection that sends
    nothing for that long; a stalled body is answered 408. A client gone mid-answer is one debug
    line.
    """

    protocol_version = "HTTP/1.1"
    server_version = "xfer-serve"
    rest: RestApi
    slots: threading.Semaphore
    max_body_bytes: int

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError as exc:  # reset, broken pipe, aborted: the client is gone
            log.debug("REST client %s went away: %s", self.client_address[0], exc)
            self.close_connection = True

    def _reply(self, status: int, content_type: str, payload: bytes, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _refuse(self, status: int, message: str) -> None:
        """Answer an error and close, reading and dropping what the client still sends."""
        self._reply(status, "application/json", json_response.error_json(message).encode(), True)
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(1 << 16):
                    break
        except OSError:
            pass

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, unknown method, ...), as JSON."""
        self.log_error("code %d, message %s", code, message)
        short = self.responses.get(code, ("Error", ""))[0]
        text = message or short
        self._refuse(code, f"{text}: {explain}" if explain and explain != text else text)

    def _body_length(self) -> int:
        if "Transfer-Encoding" in self.headers:
            raise _Refused(
                411, "chunked request bodies are not supported: send the body with Content-Length"
            )
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            return 0
        if len(values) > 1:
            raise _Refused(400, f"conflicting Content-Length headers: {sorted(values)}")
        [text] = values
        if not CONTENT_LENGTH.fullmatch(text):
            raise _Refused(400, f"Content-Length must be a non-negative integer, got {text!r}")
        if len(text.lstrip("0")) > MAX_LENGTH_DIGITS:
            raise _Refused(400, f"Content-Length out of range: {text}")
        length = int(text)
        if length > self.max_body_bytes:
            raise _Refused(
                413,
                f"request body of {length} bytes is over this server's limit of "
                f"{self.max_body_bytes} bytes (--rest_api_max_body_bytes)",
            )
        return length

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue`: a body that would be refused is refused before it is sent."""
        try:
            self._body_length()
        except _Refused as refused:
            self._refuse(refused.status, refused.message)
            return False
        return super().handle_expect_100()

    def _read_body(self, length: int) -> bytes | None:
        """The body, or None when the client closed before sending all of it."""
        chunks, left = [], length
        while left:
            chunk = self.rfile.read(min(left, READ_CHUNK))
            if not chunk:
                log.debug(
                    "REST client %s went away after %d of %d body bytes",
                    self.client_address[0],
                    length - left,
                    length,
                )
                self.close_connection = True
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _serve(self, method: str) -> None:
        try:
            length = self._body_length()
        except _Refused as refused:
            self._refuse(refused.status, refused.message)
            return
        try:
            body = self._read_body(length)
        except TimeoutError:
            log.debug("REST client %s stalled sending its body", self.client_address[0])
            message = f"no data from the client for {self.timeout:g} s while reading the body"
            self._reply(408, "application/json", json_response.error_json(message).encode(), True)
            return
        if body is None:
            return
        with self.slots:
            status, content_type, payload = self.rest.handle(method, self.path, body)
        self._reply(status, content_type, payload)

    def do_GET(self):  # noqa: N802 - http.server API
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def log_message(self, fmt, *args):  # route access logs to logging, at debug level
        log.debug("%s " + fmt, self.address_string(), *args)


class _HTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once; more wait in the listen
    backlog (not accepted, not reset) until one closes."""

    daemon_threads = True

    def __init__(self, address, handler, backlog: int, max_connections: int):
        self.request_queue_size = backlog  # socketserver's listen() argument (it defaults to 5)
        self._free = threading.Semaphore(max_connections)
        self._count_lock = threading.Lock()
        self.connections = 0
        self.closing = threading.Event()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        while not self._free.acquire(timeout=0.2):
            if self.closing.is_set():
                self.shutdown_request(request)
                return
        with self._count_lock:
            self.connections += 1
        try:
            super().process_request(request, client_address)  # starts its thread
        except BaseException:
            self._done()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done()

    def _done(self) -> None:
        with self._count_lock:
            self.connections -= 1
        self._free.release()

    def handle_error(self, request, client_address):
        """Never a traceback on stderr: a vanished client is a debug line, a bug is logged."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("REST client %s went away: %s", client_address[0], exc)
        else:
            log.exception("REST connection from %s failed", client_address[0])


class RestServer:
    """The HTTP server in a background thread (limits: serving/flags.py, xfer-serve's flags)."""

    def __init__(
        self,
        rest: RestApi,
        host: str,
        port: int,
        max_concurrent: int,
        *,
        max_body_bytes: int = REST_MAX_BODY_BYTES,
        read_timeout: float = REST_READ_TIMEOUT_MS / 1000,
        backlog: int = REST_LISTEN_BACKLOG,
        max_connections: int = REST_MAX_CONNECTIONS,
    ):
        handler = type(
            "Handler",
            (_Handler,),
            {
                "rest": rest,
                "slots": threading.Semaphore(max_concurrent),
                "max_body_bytes": max_body_bytes,
                "timeout": read_timeout,
            },
        )
        self.httpd = _HTTPServer((host, port), handler, backlog, max_connections)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="rest", kwargs={"poll_interval": 0.2}, daemon=True
        )

    @property
    def connections(self) -> int:
        """Connections being served now (each holds a thread)."""
        return self.httpd.connections

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
