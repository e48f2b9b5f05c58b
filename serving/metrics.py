"""Prometheus metrics, named after TF Serving's own (`/tensorflow/serving/...` with `/` -> `:`).

Each server owns a registry (several servers can run in one test process). Exposed on the REST
port at the monitoring config's path, as TF Serving's PrometheusExporter does.
"""

from __future__ import annotations

import threading

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

prometheus_client.disable_created_metrics()

# microseconds, as TF Serving's request/runtime latency samplers record
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_count = Counter(
            ":tensorflow:serving:request_count",
            "The total number of requests.",
            ["model_name", "status"],
            registry=r,
        )
        self.requests_by_version = Counter(
            ":xfer:serving:request_count",
            "Requests by model, version, API, entrypoint and status code.",
            ["model_name", "version", "API", "entrypoint", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
            buckets=LATENCY_BUCKETS_US,
            registry=r,
        )
        self.runtime_latency = Histogram(
            ":tensorflow:serving:runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ["model_name", "API", "runtime"],
            buckets=LATENCY_BUCKETS_US,
            registry=r,
        )
        self.batch_size = Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Tracks the batch size distribution on processing (padding included).",
            ["model_name"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.padding_size = Histogram(
            ":tensorflow:serving:batching_session:padding_size",
            "Tracks the padding size distribution on batches.",
            ["model_name"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.padding_fraction = Gauge(
            ":xfer:serving:batching_session:padding_fraction",
            "Padded rows / processed rows over every batch since the model's first batch.",
            ["model_name"],
            registry=r,
        )
        self._batch_rows: dict[str, list[int]] = {}  # model -> [processed, padding]
        self._lock = threading.Lock()
        self.model_state = Gauge(
            ":xfer:serving:model_version_state",
            "1 for the current state of each model version (START..END), 0 otherwise.",
            ["model_name", "version", "state"],
            registry=r,
        )
        self.load_count = Counter(
            ":tensorflow:cc:saved_model:load_attempt_count",
            "The number of times a SavedModel was successfully loaded.",
            ["model_path", "status"],
            registry=r,
        )

    def record_batch(self, model: str, size: int, padding: int) -> None:
        """One model call on a merged batch of `size` rows, `padding` of them padding."""
        self.batch_size.labels(model).observe(size)
        self.padding_size.labels(model).observe(padding)
        with self._lock:  # batch threads of several versions report at once
            rows = self._batch_rows.setdefault(model, [0, 0])
            rows[0] += size
            rows[1] += padding
            self.padding_fraction.labels(model).set(rows[1] / rows[0] if rows[0] else 0.0)

    def set_state(self, model: str, version: int, state: str) -> None:
        for name in STATES:
            self.model_state.labels(model, str(version), name).set(1 if name == state else 0)

    def record_request(
        self, model: str, version: int | None, api: str, entrypoint: str, status: str, us: float
    ) -> None:
        self.request_count.labels(model, status).inc()
        self.requests_by_version.labels(
            model, "" if version is None else str(version), api, entrypoint, status
        ).inc()
        if status == "OK":
            self.request_latency.labels(model, api, entrypoint).observe(us)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
