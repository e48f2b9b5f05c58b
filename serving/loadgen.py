"""Closed-loop gRPC load against a running model server, xfer-serve or TensorFlow Serving.

`concurrency` clients each send Predict requests of `batch` images back to back for a while; the
result is one `Point`: latency percentiles per request and images/s over the whole run. Only TF
Serving's public API is used (GetModelMetadata to find the signature's input, Predict), so the
same measurement runs against either server. `xfer-serving-configs --tune` and the batching
bench measure with it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np

from serving.batch_tuning import Point

log = logging.getLogger(__name__)
MESSAGE_BYTES = 64 << 20  # requests of a few dozen images are over gRPC's 4 MB default


class LoadError(RuntimeError):
    """The server refused or failed a request; the message names the request and the reason."""


@dataclass(frozen=True)
class LoadTarget:
    address: str  # host:port of the gRPC API
    model_name: str
    signature_name: str = "serving_default"
    timeout_s: float = 120.0


def string_tensor(values: list[bytes]):
    """A DT_STRING [n] TensorProto, built without TensorFlow's runtime."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    dim = tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))
    shape = tensor_shape_pb2.TensorShapeProto(dim=[dim])
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=values)


class LoadClient:
    """One channel to the server; `measure()` runs one closed-loop load point on it."""

    def __init__(self, target: LoadTarget):
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.target = target
        self.channel = grpc.insecure_channel(
            target.address,
            options=[
                ("grpc.max_send_message_length", MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MESSAGE_BYTES),
            ],
        )
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.input_name = self._input_name()

    def close(self) -> None:
        self.channel.close()

    def _input_name(self) -> str:
        """The signature's one DT_STRING input (the encoded images), from the model metadata."""
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = self.target.model_name
        where = f"{self.target.address} model {self.target.model_name!r}"
        try:
            response = self.stub.GetModelMetadata(request, timeout=self.target.timeout_s)
        except grpc.RpcError as exc:
            raise LoadError(
                f"{where}: GetModelMetadata failed: {exc.code().name}: {exc.details()}"
            ) from None
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)
        signature = defs.signature_def.get(self.target.signature_name)
        if signature is None:
            raise LoadError(f"{where}: no signature {self.target.signature_name!r}")
        strings = [k for k, v in signature.inputs.items() if v.dtype == types_pb2.DT_STRING]
        if len(signature.inputs) != 1 or len(strings) != 1:
            raise LoadError(
                f"{where}: signature {self.target.signature_name!r} must take one DT_STRING "
                f"input of encoded images; it takes {sorted(signature.inputs)}"
            )
        return strings[0]

    def request(self, images: list[bytes]):
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.target.model_name
        request.model_spec.signature_name = self.target.signature_name
        request.inputs[self.input_name].CopyFrom(string_tensor(images))
        return request

    def predict(self, request, what: str) -> None:
        try:
            self.stub.Predict(request, timeout=self.target.timeout_s)
        except grpc.RpcError as exc:
            raise LoadError(f"{what}: {exc.code().name}: {exc.details()}") from None

    def usable(self, payloads: list[bytes], concurrency: int = 4) -> list[bytes]:
        """The images the model accepts alone (a sample folder may hold a broken file, which
        would fail every request it is part of)."""
        from concurrent.futures import ThreadPoolExecutor

        def accepted(image: bytes) -> str | None:
            try:
                self.stub.Predict(self.request([image]), timeout=self.target.timeout_s)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise LoadError(
                        f"{self.target.address}: Predict of 1 image: "
                        f"{exc.code().name}: {exc.details()}"
                    ) from None
                return exc.details()
            return None

        with ThreadPoolExecutor(concurrency) as pool:
            refusals = list(pool.map(accepted, payloads))
        good = [p for p, refused in zip(payloads, refusals) if refused is None]
        reasons = [r for r in refusals if r is not None]
        if reasons:
            log.warning(
                "%d sample images refused by the model, left out: %s", len(reasons), reasons[0]
            )
        if not good:
            raise LoadError(f"{self.target.address}: the model refused every sample image")
        return good

    def measure(
        self,
        payloads: list[bytes],
        batch: int,
        concurrency: int,
        seconds: float,
        min_requests: int = 3,
        warm: bool = True,
    ) -> Point:
        """`concurrency` clients sending `batch` images a request for `seconds` (and at least
        `min_requests` each), after one unmeasured request each when `warm`."""
        what = f"{self.target.address}: Predict of {batch} images at concurrency {concurrency}"
        requests = [
            self.request([payloads[(c * batch + i) % len(payloads)] for i in range(batch)])
            for c in range(concurrency)
        ]
        latencies: list[list[float]] = [[] for _ in range(concurrency)]
        errors: list[BaseException] = []
        bounds: dict[str, float] = {}
        barrier = threading.Barrier(
            concurrency + 1, action=lambda: bounds.update(started=time.perf_counter())
        )

        def client(c: int) -> None:
            try:
                if warm:
                    self.predict(requests[c], what)  # connection, callable, caches
                barrier.wait()
                deadline = bounds["started"] + seconds
                mine = latencies[c]
                while not errors and (time.perf_counter() < deadline or len(mine) < min_requests):
                    started = time.perf_counter()
                    self.predict(requests[c], what)
                    mine.append(time.perf_counter() - started)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)
                barrier.abort()

        threads = [
            threading.Thread(target=client, args=(c,), daemon=True) for c in range(concurrency)
        ]
        for thread in threads:
            thread.start()
        with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: raised below
            barrier.wait()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - bounds.get("started", 0.0)
        if errors:
            raise errors[0]
        every = np.concatenate([np.asarray(x) for x in latencies]) * 1000
        return Point(
            batch=batch,
            concurrency=concurrency,
            requests=int(every.size),
            seconds=elapsed,
            p50_ms=float(np.percentile(every, 50)),
            p99_ms=float(np.percentile(every, 99)),
            images_per_s=every.size * batch / elapsed,
        )
