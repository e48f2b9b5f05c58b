"""Issue 5's reliability tests: hot swap under load, a broken version, temporaries, restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from servertools import copy_version, free_port, start_server, wait_for
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from testconfig import MODEL

ROOT = Path(__file__).resolve().parents[2]


def _request(image: bytes):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
    return request


def _states(channel, model=MODEL):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    return {s.version: s for s in stub.GetModelStatus(request, timeout=10).model_version_status}


def test_hot_swap_broken_version_and_temporaries(exported, images, tmp_path):
    base = tmp_path / MODEL
    copy_version(exported.path, base, 1)
    server = start_server(
        [
            f"--port={free_port()}",
            "--host=127.0.0.1",
            f"--model_name={MODEL}",
            f"--model_base_path={base}",
            "--file_system_poll_wait_seconds=1",
            "--enable_batching",
        ]
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            seen: list[int] = []  # versions, in the order the answers came
            answers: list[tuple[float, float, int]] = []  # (sent, answered, version)
            failures: list[BaseException] = []
            stop = threading.Event()

            def client():
                while not stop.is_set():
                    try:
                        sent = time.monotonic()
                        response = stub.Predict(_request(images["red"]), timeout=30)
                        version = response.model_spec.version.value
                        answers.append((sent, time.monotonic(), version))
                        seen.append(version)
                    except Exception as exc:  # noqa: BLE001 - counted, the test asserts none
                        failures.append(exc)

            threads = [threading.Thread(target=client) for _ in range(4)]
            for t in threads:
                t.start()
            wait_for(lambda: len(seen) > 20, what="requests served by version 1")
            # a temporary export being written is never loaded
            tmp = base / ".tmp-export-99999-abc"
            tmp.mkdir()
            (tmp / "saved_model.pb").write_bytes(b"half-written")
            copy_version(exported.path, base, 2)
            wait_for(lambda: seen[-1:] == [2] and seen.count(2) > 20, what="switch to v2")
            stop.set()
            for t in threads:
                t.join()
            assert failures == []
            first_two = seen.index(2)
            assert set(seen[:first_two]) == {1}
            # Once version 2 has answered, every request sent after that gets version 2 (an
            # answer of version 1 may still arrive later: it was sent before the swap).
            switched = min(answered for _, answered, version in answers if version == 2)
            assert {version for sent, _, version in answers if sent > switched} == {2}
            states = _states(channel)
            assert set(states) == {1, 2}  # the temporary is not a version
            assert states[2].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
            # Version 1 left the routing at once, but stays UNLOADING until its last request
            # is done and its session closed, which takes a while on a loaded machine.
            wait_for(
                lambda: _states(channel)[1].state == get_model_status_pb2.ModelVersionStatus.END,
                what="version 1 unloaded",
            )

            # a garbage 3/saved_model.pb: reported, and v2 keeps serving
            (base / "3").mkdir()
            (base / "3" / "saved_model.pb").write_bytes(b"\x00garbage, not a SavedModel")
            broken = wait_for(
                lambda: (
                    _states(channel).get(3)
                    if _states(channel).get(3, None) is not None
                    and _states(channel)[3].state == get_model_status_pb2.ModelVersionStatus.END
                    else None
                ),
                what="version 3 reported as failed",
            )
            assert broken.status.error_code != 0 and broken.status.error_message
            # Two more polls, run here rather than slept for (a loaded machine polls late). The
            # failure seen may be of the directory before its file was written: one poll sees
            # the change, the next retries. Then version 3 has failed for good; v2 serves.
            server.manager.poll()
            server.manager.poll()
            assert _states(channel)[3].state == get_model_status_pb2.ModelVersionStatus.END
            assert stub.Predict(_request(images["blue"]), timeout=30).model_spec.version.value == 2
            assert _states(channel)[2].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    finally:
        server.stop(0)


def _spawn(base: Path, port: int, rest_port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            f"--port={port}",
            f"--rest_api_port={rest_port}",
            "--host=127.0.0.1",
            f"--model_name={MODEL}",
            f"--model_base_path={base}",
        ],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _predict_when_up(port: int, image: bytes, proc: subprocess.Popen) -> int:
    def attempt():
        assert proc.poll() is None, "server exited"
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                return stub.Predict(_request(image), timeout=5).model_spec.version.value
        except grpc.RpcError:
            return None

    return wait_for(attempt, timeout=90, interval=0.5, what="the server subprocess")


@pytest.mark.slow
def test_killed_server_restarts_and_serves_from_disk(exported, images, tmp_path):
    base = tmp_path / MODEL
    copy_version(exported.path, base, 4)
    port, rest_port = free_port(), free_port()
    log_path = tmp_path / "server.log"
    proc = _spawn(base, port, rest_port, log_path)
    try:
        assert _predict_when_up(port, images["green"], proc) == 4
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc = _spawn(base, port, rest_port, log_path)
        assert _predict_when_up(port, images["green"], proc) == 4
        proc.send_signal(signal.SIGTERM)  # graceful stop
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
