"""Errors carrying a gRPC status code, raised as TF Serving raises them (same codes and texts)."""

from __future__ import annotations

import re

import grpc

# model_servers/http_server.cc ToHTTPStatusCode
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A request failed with a gRPC status code (mapped to HTTP for REST)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unimplemented(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNIMPLEMENTED, message)


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


# tf.debugging.Assert words its message differently in a graph ("assertion failed: [msg]") and
# eagerly ("Summarized data: b'msg'"); the model's own assertion text is the reason shown.
_ASSERTION = re.compile(
    r"assertion failed: \[(?P<msg>.*?)\]|Summarized data: b(?P<q>['\"])(?P<eager>.*?)(?P=q)", re.S
)


# Same value as export/contract.py DECODE_SCOPE (a test keeps them equal): the exported graph
# decodes images under this name scope.
DECODE_SCOPE = "decode_images"
# Where TensorFlow says which node failed: a TF1 session, a tf.function, an eager op.
_NODE = re.compile(r"\{\{node ([^}]+)\}\}|Detected at node '?([\w/.-]+)|\[Op:(\w+)\]")


def failing_node(text: str) -> str | None:
    match = _NODE.search(text)
    return next((g for g in match.groups() if g), None) if match else None


def input_refused_reason(exc: BaseException) -> str:
    """One line from a TensorFlow error on a client's input, without graph node noise.

    The model's assertion message if it raised one (the exporter's decode step words its refusals
    so); a failure in a decode op (a DecodePng, or anything under DECODE_SCOPE) as
    `not a decodable image: ...`, as the exporter words its own decode errors
    (export/model/preprocessing.py error_reason; tests/serving feeds both the same errors);
    anything else as what it is, the model's error on this input, naming the node.
    """
    text = getattr(exc, "message", None) or str(exc)
    match = _ASSERTION.search(text)
    if match:
        return (match.group("msg") or match.group("eager")).strip()
    node = failing_node(text)
    line = _last_line(text) or type(exc).__name__
    if node is None or DECODE_SCOPE in node or "Decode" in node:
        return f"not a decodable image: {line}"
    return f"the model failed on this input: {line} (node {node})"


def _last_line(text: str) -> str:
    text = re.sub(r"\s*\[\[\{\{(?:function_)?node .*", "", text, flags=re.S)
    text = re.sub(r"\s*\[Op:\w+\].*", "", text, flags=re.S)
    text = re.sub(r"\{\{function_node [^}]*\}\}", "", text)
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip()
        and not line.startswith("  ")
        and not line.startswith(("Graph execution error", "Detected at node"))
    ]
    return lines[-1] if lines else ""


def from_tf_error(exc: Exception) -> ServingError:
    """A TensorFlow runtime error -> its status code; decode failures read as one line."""
    code_value = getattr(exc, "error_code", None)
    code = next((c for c in grpc.StatusCode if c.value[0] == code_value), grpc.StatusCode.UNKNOWN)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ServingError(code, input_refused_reason(exc))
    message = getattr(exc, "message", None) or str(exc)
    return ServingError(code, message.split("\n")[0])


def load_error_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """A failed load -> (its status code, the message on one line, at most 2000 characters)."""
    code_value = getattr(exc, "error_code", None)
    code = next((c for c in grpc.StatusCode if c.value[0] == code_value), grpc.StatusCode.UNKNOWN)
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return code, " ".join(text.split())[:2000]
