"""`xfer-serving-configs --tune` end to end, in a reduced mode: the session's tiny model on the
local server with batching off, then the config it writes served with batching on."""

from __future__ import annotations

import json

import grpc
import tensorflow as tf
from servertools import free_port, start_server
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from testconfig import MODEL

from serving.config import BatchingOptions, load_batching_file
from serving.deploy_configs import main

REDUCED = [
    "--tune-batch-sizes", "1,2",
    "--tune-concurrencies", "1,2",
    "--tune-seconds", "0.2",
    "--tune-rounds", "2",
    "--grpc-max-threads", "4",
]  # fmt: skip


def tune_args(server, shapes_root, out, p99_ms: str) -> list[str]:
    return [
        "--model-name", MODEL,
        "--out", str(out),
        "--tune",
        "--target", f"127.0.0.1:{server.grpc_port}",
        "--images", str(shapes_root),
        "--p99-ms", p99_ms,
        *REDUCED,
    ]  # fmt: skip


def test_tune_writes_a_config_both_servers_accept(
    two_version_server, shapes_root, served_base, tmp_path, capsys
):
    out = tmp_path / "configs"
    assert main(tune_args(two_version_server, shapes_root, out, "60000")) == 0
    printed = capsys.readouterr().out.split()
    names = ["batching-tuning.json", "batching-tuning.png", "models.config", "batching.config"]
    assert [str(out / n) for n in names] == printed[:4]
    report = json.loads((out / "batching-tuning.json").read_text())
    measured = {(p["batch"], p["concurrency"]) for p in report["points"]}
    assert measured == {(1, 1), (2, 1), (1, 2), (2, 2), (1, 4)}  # + 1 image at the 4 in flight
    assert all(p["images_per_s"] > 0 and p["p99_ms"] >= p["p50_ms"] for p in report["points"])
    assert (out / "batching-tuning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # What was chosen is what was written, in TF Serving's text format, read by its protos.
    choice = report["choice"]
    options = load_batching_file(str(out / "batching.config"))
    assert choice["max_batch_size"] in (1, 2) and choice["num_batch_threads"] in (1, 2)
    # Requests of up to 32 images stay accepted (--max-batch-size; the warmup file's 5 too),
    # spread over batches of the chosen size.
    allowed = tuple(choice["allowed_batch_sizes"])
    assert options == BatchingOptions(
        max_batch_size=32,
        batch_timeout_micros=choice["batch_timeout_micros"],
        max_enqueued_batches=100,
        num_batch_threads=choice["num_batch_threads"],
        allowed_batch_sizes=(*allowed, 32) if allowed else (),
        enable_large_batch_splitting=True,
        max_execution_batch_size=choice["max_batch_size"],
    )
    # The local server starts with it and answers through the batcher.
    server = start_server(
        [
            f"--port={free_port()}",
            "--host=127.0.0.1",
            f"--model_name={MODEL}",
            f"--model_base_path={served_base}",
            "--file_system_poll_wait_seconds=0",
            "--enable_batching",
            f"--batching_parameters_file={out / 'batching.config'}",
        ]
    )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["image_bytes"].CopyFrom(
        tf.make_tensor_proto([next(shapes_root.rglob("*.png")).read_bytes()])
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(request, timeout=30)
        assert response.model_spec.version.value == 2
        assert tf.make_ndarray(response.outputs["scores"]).shape[0] == 1
    finally:
        server.stop(0)


def test_a_target_out_of_reach_writes_the_table_and_no_config(
    two_version_server, shapes_root, tmp_path, capsys
):
    out = tmp_path / "configs"
    assert main(tune_args(two_version_server, shapes_root, out, "0.001")) == 1
    err = capsys.readouterr().err
    assert "no measured configuration meets p99 0.001 ms" in err
    assert json.loads((out / "batching-tuning.json").read_text())["choice"] is None
    assert not (out / "batching.config").exists()


def test_tune_usage_errors(tmp_path, capsys):
    assert main(["--model-name", "m", "--out", str(tmp_path), "--tune"]) == 2
    assert "--tune needs --target, --images, --p99-ms" in capsys.readouterr().err
    args = ["--model-name", "m", "--out", str(tmp_path), "--tune", "--p99-ms", "100"]
    args += ["--target", "127.0.0.1:1", "--images", str(tmp_path / "none")]
    assert main(args) == 2
    assert "none: not a directory of sample images" in capsys.readouterr().err
