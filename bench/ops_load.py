"""The load of bench/ops_drill.py: N gRPC clients, each with its own channel, one image per
Predict; every call is kept with its times, code and answering version, so that windows (before,
during and after a swap) are summarised afterwards."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import grpc
from ops_requests import Target, channel, predict_request
from tensorflow_serving.apis import prediction_service_pb2_grpc


@dataclass(frozen=True)
class Call:
    start: float  # time.monotonic()
    end: float
    code: str  # OK or a gRPC status code name
    version: int  # the version that answered (0 on failure)


class Load:
    """`clients` threads, each with its own channel, each sending one image per Predict until
    the block ends. Every call is kept, so windows (before, during, after a swap) are cut later."""

    def __init__(self, target: Target, clients: int, images: list[bytes]):
        self.requests = [predict_request(target.model, [image]) for image in images]
        self.target = target
        self.calls: list[Call] = []  # list.append is atomic: no lock
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, index: int) -> None:
        with channel(self.target) as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            i = index
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    reply = stub.Predict(self.requests[i % len(self.requests)], timeout=120)
                    code, version = "OK", reply.model_spec.version.value
                except grpc.RpcError as exc:
                    code, version = exc.code().name, 0
                self.calls.append(Call(start, time.monotonic(), code, version))
                i += 1

    def first_answer_from(self, version: int) -> float | None:
        return min((c.end for c in list(self.calls) if c.version == version), default=None)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def pct(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return round(values[int(q * (len(values) - 1))] * 1000, 1) if values else None


def summary(calls: list[Call], start: float, end: float) -> dict:
    """Calls started in [start, end): requests, failures by code, rate, latency of the OK ones."""
    window = [c for c in calls if start <= c.start < end]
    ok = [c.end - c.start for c in window if c.code == "OK"]
    return {
        "requests": len(window),
        "failed": dict(Counter(c.code for c in window if c.code != "OK")),
        "requests_per_s": round(len(window) / max(end - start, 1e-9), 1),
        "latency_ms": {"p50": pct(ok, 0.5), "p99": pct(ok, 0.99), "max": pct(ok, 1.0)},
        "versions": dict(Counter(str(c.version) for c in window if c.code == "OK")),
    }


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"ops_drill: timed out after {timeout:.0f} s waiting for {what}")
