"""Issue 14.7: a version that fails to load is retried when its directory changes.

A version copied in place (`cp -r`, `rsync`) can be seen half-written and fail; it used to be
retried only if its saved_model.pb changed. Now any change under the version directory (names,
sizes, mtimes, modes) retries it once the directory has stayed unchanged for a poll, and an
unchanged failed version is never loaded again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request

import grpc
import pytest
import tensorflow as tf
from servertools import free_port, start_server, wait_for
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from testconfig import MODEL

from serving import manager as manager_module
from serving.config import ModelConfig
from serving.loader import version_fingerprint
from serving.manager import ModelManager

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


@pytest.fixture
def load_attempts(monkeypatch) -> list[int]:
    """The versions the manager tried to load, in order (a wrapper around load_servable)."""
    calls: list[int] = []
    real = manager_module.load_servable

    def counting(name, version, path):
        calls.append(version)
        return real(name, version, path)

    monkeypatch.setattr(manager_module, "load_servable", counting)
    return calls


def _status(channel, version: int):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    request.model_spec.version.value = version
    [status] = stub.GetModelStatus(request, timeout=10).model_version_status
    return status


def _status_or_none(channel, version: int):
    try:
        return _status(channel, version)
    except grpc.RpcError:
        return None


def test_a_version_copied_in_two_steps_becomes_available(exported, images, tmp_path, load_attempts):
    """First a copy without variables/ (fails), then the rest: AVAILABLE, saved_model.pb as it
    was; in between, polls over the unchanged half-copy do not load it again. The copy starts
    after the server did (a version in the start-up config that fails stops the start-up, as in
    TF Serving)."""
    base = tmp_path / MODEL
    base.mkdir()
    version = base / "1"
    server = start_server(
        [
            f"--port={free_port()}",
            f"--rest_api_port={free_port()}",
            "--host=127.0.0.1",
            f"--model_name={MODEL}",
            f"--model_base_path={base}",
            "--file_system_poll_wait_seconds=1",
        ]
    )
    try:
        shutil.copytree(exported.path, version, ignore=shutil.ignore_patterns("variables"))
        pb = version / "saved_model.pb"
        pb_stat = (pb.stat().st_mtime_ns, pb.stat().st_size)
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            wait_for(
                lambda: load_attempts and _status_or_none(channel, 1) is not None,
                timeout=60,
                what="the half-copied version 1 tried",
            )
            wait_for(lambda: _status(channel, 1).state == END, timeout=60, what="version 1 END")
            failed = _status(channel, 1)
            assert failed.state == END and failed.status.error_code != 0
            message = failed.status.error_message
            assert "load attempt 1 failed" in message, message
            assert f"retried when a file or directory under {version} changes" in message
            with urllib.request.urlopen(
                f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}", timeout=10
            ) as response:
                [rest] = json.load(response)["model_version_status"]
            assert rest["state"] == "END" and rest["status"]["error_message"] == message

            time.sleep(3.5)  # three polls over the unchanged half-copy
            assert load_attempts == [1], "a failed, unchanged version was loaded again"
            assert _status(channel, 1).status.error_message == message

            shutil.copytree(exported.path / "variables", version / "variables")  # the rest
            wait_for(
                lambda: _status(channel, 1).state == AVAILABLE,
                timeout=60,
                what="version 1 retried after its variables/ arrived",
            )
            assert load_attempts == [1, 1]
            assert _status(channel, 1).status.error_code == 0
            assert (pb.stat().st_mtime_ns, pb.stat().st_size) == pb_stat  # never touched

            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            request.inputs["image_bytes"].CopyFrom(
                tf.make_tensor_proto([images["red"]], dtype=tf.string)
            )
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert stub.Predict(request, timeout=30).model_spec.version.value == 1
    finally:
        server.stop(0)


def test_a_failed_version_is_retried_once_per_change_and_after_the_change_settles(
    tmp_path, load_attempts
):
    """Polled by hand: unchanged -> no reload; changed -> reloaded on the next poll that finds the
    directory as it was (a copy in progress is not loaded at every poll)."""
    version = tmp_path / "m" / "7"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"\x00 not a SavedModel")
    manager = ModelManager([ModelConfig("m", str(tmp_path / "m"))], warmup=False)

    def message() -> str:
        [(_, status)] = manager.status("m")
        assert status.state == "END"
        return status.message

    manager.poll()
    assert load_attempts == [7] and "load attempt 1 failed" in message()
    for _ in range(5):
        manager.poll()
    assert load_attempts == [7]

    (version / "variables").mkdir()  # the copy goes on...
    manager.poll()
    assert load_attempts == [7]  # ...changed since the last poll: wait for it to settle
    (version / "variables" / "variables.index").write_bytes(b"partial")
    manager.poll()
    assert load_attempts == [7]  # still changing
    manager.poll()
    assert load_attempts == [7, 7] and "load attempt 2 failed" in message()
    manager.poll()
    manager.poll()
    assert load_attempts == [7, 7]


def test_the_fingerprint_sees_names_sizes_mtimes_and_modes_under_the_version(tmp_path):
    version = tmp_path / "1"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"pb")
    (version / "variables" / "variables.index").write_bytes(b"index")
    before = version_fingerprint(version)
    assert before == version_fingerprint(version)  # stable

    changes = [
        lambda: (version / "variables" / "variables.data-00000-of-00001").write_bytes(b"d"),
        lambda: (version / "variables" / "variables.index").write_bytes(b"index, longer"),
        lambda: os.utime(version / "variables" / "variables.index", ns=(1, 1)),
        lambda: (version / "variables").chmod(0o700),  # e.g. fixed after PERMISSION_DENIED
        lambda: (version / "variables" / "variables.index").chmod(0o600),
    ]
    for change in changes:
        previous = version_fingerprint(version)
        change()
        assert version_fingerprint(version) != previous


def test_the_fingerprint_does_not_loop_on_a_symlinked_directory(tmp_path):
    version = tmp_path / "1"
    version.mkdir()
    (version / "loop").symlink_to(version, target_is_directory=True)
    assert any(entry[0] == "loop" for entry in version_fingerprint(version))
