"""The wire: TF Serving's Predict over gRPC (default, here) or REST (client/rest_transport.py),
behind one `predict()` call.

Both return a `Prediction` or raise `RpcError(code, message)` with gRPC code names, so retries and
batch splitting above do not care which protocol carried the request. With `--preprocess client`
the images are the contract's uint8 pixels (3 x S x S bytes each, client/pixels.py), sent to
`serving_pixels`; `metadata()` is GetModelMetadata, which says S.
"""

from __future__ import annotations

import itertools
import logging
import threading

import numpy as np

from client.config import PIXELS_INPUT_KEY, PREPROCESSING_OUTPUT, SERVING_PIXELS, ScoreConfig
from client.ood import OodOutputs, from_columns
from client.pixels import ModelMetadata
from client.rest_transport import RestTransport
from client.retry import RpcError
from client.wire import Prediction, parse_metadata, pick_target, shape_of

log = logging.getLogger(__name__)

OUTPUTS = ("labels", "top_scores")
PIXELS_OUTPUTS = (*OUTPUTS, PREPROCESSING_OUTPUT)


def _version(response) -> int | None:
    """The version that answered a gRPC response (its `model_spec`)."""
    return response.model_spec.version.value if response.model_spec.HasField("version") else None


def _read_file(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


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
        self.ood = OodOutputs(lambda stub: self.metadata(stub=stub))

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

    def metadata(self, attempt: int = 0, stub=None) -> ModelMetadata:
        """GetModelMetadata's signature_def, for the model (and version or label) scored: from
        `stub` when given (the server a request goes to), else the target rotation's next."""
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        if stub is None:
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
                alias: (types_pb2.DataType.Name(info.dtype), shape_of(info.tensor_shape.dim))
                for alias, info in signature.inputs.items()
            }
            for name, signature in signature_map.signature_def.items()
        }
        outputs = {n: list(s.outputs) for n, s in signature_map.signature_def.items()}
        return ModelMetadata(_version(response), signatures, outputs)

    def predict(self, images: list[bytes], attempt: int = 0, size: int | None = None):
        """A Prediction for encoded images, or with `size` for pixel payloads; with the OOD
        outputs of the version that answers (client/ood.py)."""
        stub = pick_target(self.stubs, attempt, self._next, self._batch)

        def send(ood: tuple[str, ...]):
            try:
                response = stub.Predict(
                    self.request(images, size, ood),
                    timeout=self.config.timeout,
                    metadata=self.metadata_headers,
                )
            except self._grpc.RpcError as exc:
                raise RpcError(exc.code().name, exc.details() or "") from None
            return response, _version(response)

        signature = SERVING_PIXELS if size else self.config.signature
        response = self.ood.send(signature, stub, send)
        labels = _tensor_to_array(response.outputs["labels"])
        scores = _tensor_to_array(response.outputs["top_scores"])
        version = _version(response)
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


def make_transport(config: ScoreConfig):
    return RestTransport(config) if config.protocol == "rest" else GrpcTransport(config)
