"""Serving fixtures: version directories copied from the session's export, and running servers."""

from __future__ import annotations

import base64

import grpc
import pytest
from servertools import free_port, start_server, two_version_config
from testconfig import MODEL


@pytest.fixture(scope="session")
def images(shapes_root) -> dict[str, bytes]:
    return {
        "red": (shapes_root / "red" / "img_000.jpg").read_bytes(),
        "green": (shapes_root / "green" / "img_001.png").read_bytes(),
        "blue": (shapes_root / "blue" / "img_002.jpg").read_bytes(),
    }


@pytest.fixture(scope="session")
def b64(images):
    return {k: base64.b64encode(v).decode("ascii") for k, v in images.items()}


@pytest.fixture(scope="session")
def server(served_base, tmp_path_factory):
    """Versions 1 and 2 (labels stable=1, canary=2) of the session's `shapes/1` and `shapes/2`,
    like `two_version_server`, but with batching and Prometheus enabled."""
    configs = tmp_path_factory.mktemp("configs")
    two_version_config(configs / "models.config", MODEL, served_base)
    (configs / "batching.config").write_text(
        "max_batch_size { value: 8 }\n"
        "batch_timeout_micros { value: 100000 }\n"
        "max_enqueued_batches { value: 100 }\n"
        "num_batch_threads { value: 2 }\n"
        "allowed_batch_sizes: 2\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8\n"
    )
    (configs / "monitoring.config").write_text(
        'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n'
    )
    srv = start_server(
        [
            f"--port={free_port()}",
            f"--rest_api_port={free_port()}",
            "--host=127.0.0.1",
            f"--model_config_file={configs / 'models.config'}",
            "--enable_batching",
            f"--batching_parameters_file={configs / 'batching.config'}",
            f"--monitoring_config_file={configs / 'monitoring.config'}",
            "--file_system_poll_wait_seconds=0",
            "--allow_reload_config_requests",  # test_reload_config_...
        ]
    )
    yield srv
    srv.stop(0)


@pytest.fixture(scope="session")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="session")
def model_stub(channel):
    from tensorflow_serving.apis import model_service_pb2_grpc

    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="session")
def rest_url(server) -> str:
    return f"http://127.0.0.1:{server.rest_port}"
