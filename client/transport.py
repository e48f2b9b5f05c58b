"""The wire: TF Serving's Predict over gRPC (default) or REST, behind one `predict()` call.

Both return a `Prediction` or raise `RpcError(code, message)` with gRPC code names, so retries and
batch splitting above do not care which protocol carried the request. With `--preprocess client`
the images are the contract's uint8 pixels (3 x S x S bytes each, client/pixels.py), sent to
`serving_pixels`; `metadata()` is GetModelMetadata, which says S.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np

from client.config import (
    OOD_OUTPUTS,
    PIXELS_INPUT_KEY,
    PREPROCESSING_OUTPUT,
    SERVING_PIXELS,
    ScoreConfig,
)
from client.ood import OodOutputs, from_columns
from client.pixels import ModelMetadata
from client.retry import RpcError

log = logging.getLogger(__name__)

OUTPUTS = ("labels", "top_scores")
PIXELS_OUTPUTS = (*OUTPUTS, PREPROCESSING_OUTPUT)


def pick_target(targets: list, attempt: int, counter, batch: threading.local):
    """Round-robin over the targets for a batch's first attempt; each retry of that batch moves
    on to the next target after the one that failed. A batch's attempts run one after another in
    its thread, so its starting point lives in thread-local state. (Adding the attempt to a
    shared counter instead kept a batch on the same target of two on every retry: the counter
    and the attempt both advance by one, so a dead target among two was never routed around.)"""
    if attempt == 0 or not hasattr(batch, "start"):
        batch.start = next(counter)
    return targets[(batch.start + attempt) % len(targets)]


@dataclass
class Prediction:
    """Top-k labels (best first) and their scores for each image of a request."""

    labels: list[list[str]]
    scores: list[list[float]]
    model_version: int | None
    preprocessing: list[str] | None = None  # serving_pixels' contract, per image
    ood_score: list[float] | None = None  # per image, when the model has an OOD detector
    is_ood: list[bool] | None = None


def pixel_array(images: list[bytes], size: int) -> np.ndarray:
    """Pixel payloads (each 3 x S x S bytes, client/pixels.py) -> uint8 [N, S, S, 3]."""
    return np.frombuffer(b"".join(images), np.uint8).reshape(len(images), size, size, 3)


def _shape(dims) -> list[int]:
    return [int(d["size"]) if isinstance(d, dict) else d.size for d in dims]


def _read_file(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def parse_metadata(headers: list[str]) -> list[tuple[str, str]]:
    """`'authorization: Bearer X'` → `('authorization', 'Bearer X')` (gRPC keys are lowercase)."""
    pairs = []
    for header in headers:
        name, _, value = header.partition(":")
        pairs.append((name.strip().lower(), value.strip()))
    return pairs


def _tensor_to_array(tensor) -> np.ndarray:
    """TensorProto → numpy for the dtypes the signature returns (string, float, int)."""
    from tensorflow.core.framework import types_pb2

    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.dtype == types_pb2.DT_STRING:
        values = [v.decode("utf-8", "replace") for v in tensor.string_val]
        return np.array(values, dtype=object).reshape(shape)
    dtypes = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_INT32: np.int32, types_pb2.DT_BOOL: bool}
    dtype = dtypes.get(tensor.dtype, np.float32)
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype=dtype).reshape(shape)
    values = {np.float32: tensor.float_val, np.int32: tensor.int_val, bool: tensor.bool_val}[dtype]
    return np.asarray(values, dtype=dtype).reshape(shape)


class GrpcTransport:
    """PredictionService/Predict over one channel per target, rotating between them."""

    def __init__(self, config: ScoreConfig):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self._grpc = grpc
        self.config = config
        self.metadata_headers = parse_metadata(config.auth_header) or None
        self.channels = [self._channel(target) for target in config.target]
        self.stubs = [prediction_service_pb2_grpc.PredictionServiceStub(c) for c in self.channels]
        self._next = itertools.count()
        self._batch = threading.local()
        self.ood = OodOutputs(self.metadata)

    def channel_options(self) -> list[tuple[str, object]]:
        config = self.config
        options: list[tuple[str, object]] = [
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            # Spreads requests over every address a DNS name resolves to (dns:///svc:8500).
            ("grpc.lb_policy_name", "round_robin"),
            # A channel whose server went away reconnects on the client's own retry schedule.
            # gRPC's default backoff grows to 120 s, and meanwhile every request fails at once
            # with the last connection error: a server back after 40 s went unnoticed for 20 s
            # more, past a 60 s retry budget.
            ("grpc.initial_reconnect_backoff_ms", max(100, int(config.initial_backoff * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(100, int(config.max_backoff * 1000))),
        ]
        if config.keepalive_s > 0:
            options += [
                ("grpc.keepalive_time_ms", int(config.keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", 20000),
                ("grpc.keepalive_permit_without_calls", 0),
            ]
        if config.tls_server_name:
            options.append(("grpc.ssl_target_name_override", config.tls_server_name))
        return options

    def _channel(self, target: str):
        grpc, config = self._grpc, self.config
        if config.tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_file(config.root_certs),
                private_key=_read_file(config.client_key),
                certificate_chain=_read_file(config.client_cert),
            )
            return grpc.secure_channel(target, credentials, options=self.channel_options())
        return grpc.insecure_channel(target, options=self.channel_options())

    def _model_spec(self, spec) -> None:
        config = self.config
        spec.name = config.model_name
        if config.version is not None:
            spec.version.value = config.version
        elif config.version_label:
            spec.version_label = config.version_label

    def request(self, images: list[bytes], size: int | None = None, ood: tuple[str, ...] = ()):
        """Encoded images to --signature, or pixel payloads to serving_pixels (`size`)."""
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorflow_serving.apis import predict_pb2

        config = self.config
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec)

        def dims(*sizes):
            dim = [tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in sizes]
            return tensor_shape_pb2.TensorShapeProto(dim=dim)

        if size is None:
            request.model_spec.signature_name = config.signature
            tensor = tensor_pb2.TensorProto(
                dtype=types_pb2.DT_STRING, tensor_shape=dims(len(images)), string_val=images
            )
            request.inputs[config.input_key].CopyFrom(tensor)
            request.output_filter.extend(OUTPUTS)  # only what we write: small responses
            request.output_filter.extend(ood)
            return request
        request.model_spec.signature_name = SERVING_PIXELS
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_UINT8,
            tensor_shape=dims(len(images), size, size, 3),
            tensor_content=b"".join(images),
        )
        request.inputs[PIXELS_INPUT_KEY].CopyFrom(tensor)
        request.output_filter.extend(PIXELS_OUTPUTS)
        request.output_filter.extend(ood)
        return request

    def metadata(self, attempt: int = 0) -> ModelMetadata:
        """GetModelMetadata's signature_def, for the model (and version or label) scored."""
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        stub = pick_target(self.stubs, attempt, self._next, self._batch)
        try:
            response = stub.GetModelMetadata(
                request, timeout=self.config.timeout, metadata=self.metadata_headers
            )
        except self._grpc.RpcError as exc:
            raise RpcError(exc.code().name, exc.details() or "") from None
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        signatures = {
            name: {
                alias: (types_pb2.DataType.Name(info.dtype), _shape(info.tensor_shape.dim))
                for alias, info in signature.inputs.items()
            }
            for name, signature in signature_map.signature_def.items()
        }
        outputs = {n: list(s.outputs) for n, s in signature_map.signature_def.items()}
        version = (
            response.model_spec.version.value if response.model_spec.HasField("version") else None
        )
        return ModelMetadata(version, signatures, outputs)

    def predict(self, images: list[bytes], attempt: int = 0, size: int | None = None):
        """A Prediction for encoded images, or with `size` for pixel payloads."""
        ood = self.ood.wanted(SERVING_PIXELS if size else self.config.signature, attempt)
        stub = pick_target(self.stubs, attempt, self._next, self._batch)
        try:
            response = stub.Predict(
                self.request(images, size, ood),
                timeout=self.config.timeout,
                metadata=self.metadata_headers,
            )
        except self._grpc.RpcError as exc:
            raise RpcError(exc.code().name, exc.details() or "") from None
        labels = _tensor_to_array(response.outputs["labels"])
        scores = _tensor_to_array(response.outputs["top_scores"])
        version = (
            response.model_spec.version.value if response.model_spec.HasField("version") else None
        )
        contract = None
        if PREPROCESSING_OUTPUT in response.outputs:
            contract = list(_tensor_to_array(response.outputs[PREPROCESSING_OUTPUT]))
        prediction = Prediction(
            [list(row) for row in labels],
            [[float(s) for s in row] for row in scores],
            version,
            contract,
        )
        prediction.ood_score, prediction.is_ood = from_columns(response.outputs, _tensor_to_array)
        return prediction

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class RestTransport:
    """POST `{"instances": [{"b64": ...}]}` to `/v1/models/<name>[...]:predict`.

    REST responses carry no model version: it is read once, at start, from the model's status
    (GET /v1/models/<name>[/versions/<v>|/labels/<l>]: the highest AVAILABLE version, which is
    where unpinned requests go), or None when the status cannot be read. A hot swap during a
    REST run is therefore not reflected in `model_version`; use gRPC when that matters.
    """

    def __init__(self, config: ScoreConfig):
        self.config = config
        scheme = "https" if config.tls else "http"
        self.bases = [
            t if "://" in t else f"{scheme}://{t}" for t in (x.rstrip("/") for x in config.target)
        ]
        self.headers = {"Content-Type": "application/json"}
        for name, value in parse_metadata(config.auth_header):
            self.headers[name] = value
        self.context = None
        if config.tls:
            self.context = ssl.create_default_context(cafile=config.root_certs)
            if config.client_cert:
                self.context.load_cert_chain(config.client_cert, config.client_key)
        self._next = itertools.count()
        self._batch = threading.local()
        self.model_version = self._status_version()

    def _model_path(self) -> str:
        path = f"/v1/models/{self.config.model_name}"
        if self.config.version is not None:
            path += f"/versions/{self.config.version}"
        elif self.config.version_label:
            path += f"/labels/{self.config.version_label}"
        return path

    def _open(self, url: str, body: bytes | None = None):
        request = urllib.request.Request(url, data=body, headers=self.headers)
        try:
            with urllib.request.urlopen(
                request, timeout=self.config.timeout, context=self.context
            ) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw).get("error", "")
            except ValueError:
                message = raw.decode("utf-8", "replace")[:500]
            code = HTTP_CODES.get(exc.code, "UNKNOWN")
            if code == "INVALID_ARGUMENT" and "signature" in message and "not found" in message:
                code = "FAILED_PRECONDITION"  # same HTTP 400, but bisecting cannot help
            too_large = exc.code == 413  # Payload Too Large: a smaller request can pass
            raise RpcError(code, message or f"HTTP {exc.code}", too_large=too_large) from None
        except TimeoutError:
            raise RpcError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise RpcError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None
            tls = isinstance(exc.reason, ssl.SSLError)
            raise RpcError("UNAVAILABLE", f"{url}: {exc.reason}", tls_failure=tls) from None
        except (ConnectionError, OSError) as exc:
            tls = isinstance(exc, ssl.SSLError)
            raise RpcError("UNAVAILABLE", f"{url}: {exc}", tls_failure=tls) from None

    def _status_version(self) -> int | None:
        if self.config.version is not None:
            return self.config.version
        try:
            status = self._open(self.bases[0] + self._model_path())
            available = [
                int(s["version"])
                for s in status.get("model_version_status", [])
                if s.get("state") == "AVAILABLE"
            ]
            return max(available) if available else None
        except (RpcError, ValueError, KeyError, TypeError) as exc:
            log.warning("model version unknown (status unavailable: %s); recording null", exc)
            return None

    def metadata(self, attempt: int = 0) -> ModelMetadata:
        """GET .../metadata: the signature_def as TF Serving's JSON (int64 sizes as strings)."""
        base = pick_target(self.bases, attempt, self._next, self._batch)
        body = self._open(f"{base}{self._model_path()}/metadata")
        try:
            defs = body["metadata"]["signature_def"]["signature_def"]
            signatures = {
                name: {
                    alias: (info.get("dtype", ""), _shape(info["tensor_shape"].get("dim", [])))
                    for alias, info in signature.get("inputs", {}).items()
                }
                for name, signature in defs.items()
            }
            version = body.get("model_spec", {}).get("version")
        except (KeyError, TypeError, AttributeError) as exc:
            raise RpcError("INTERNAL", f"unexpected metadata from {base}: {exc!r}") from None
        return ModelMetadata(int(version) if version else None, signatures)

    def predict(self, images: list[bytes], attempt: int = 0, size: int | None = None):
        """A Prediction for encoded images (b64), or with `size` for pixel payloads (nested lists
        of integers: REST has no binary form for a uint8 tensor)."""
        base = pick_target(self.bases, attempt, self._next, self._batch)
        if size is None:
            signature = self.config.signature
            instances = [{"b64": base64.b64encode(i).decode("ascii")} for i in images]
        else:
            signature = SERVING_PIXELS
            instances = pixel_array(images, size).tolist()
        body = json.dumps({"signature_name": signature, "instances": instances}).encode()
        result = self._open(f"{base}{self._model_path()}:predict", body)
        rows = result.get("predictions", [])
        labels = [list(r["labels"]) for r in rows]
        scores = [[float(s) for s in r["top_scores"]] for r in rows]
        contract = [r[PREPROCESSING_OUTPUT] for r in rows if PREPROCESSING_OUTPUT in r]
        prediction = Prediction(labels, scores, self.model_version, contract if size else None)
        columns = {o: [r[o] for r in rows] for o in OOD_OUTPUTS if all(o in r for r in rows)}
        prediction.ood_score, prediction.is_ood = from_columns(columns if rows else {})
        return prediction

    def close(self) -> None:
        pass


def make_transport(config: ScoreConfig):
    return RestTransport(config) if config.protocol == "rest" else GrpcTransport(config)
