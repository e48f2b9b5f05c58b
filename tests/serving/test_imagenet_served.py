"""The pretrained ImageNet classifier, published with `xfer-export --imagenet-head` and queried
through the local server over gRPC, as a user would after `make export` with the ImageNet head."""

import json
from pathlib import Path

import grpc
import matplotlib
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.mark.slow
def test_imagenet_head_is_published_and_served(tmp_path, monkeypatch):
    from servertools import free_port, start_server

    from export.cli.export import main as export_main

    monkeypatch.setenv("XFER_CACHE_DIR", str(tmp_path / "cache"))
    base = tmp_path / "models" / "imagenet"
    code = export_main(
        [
            "--imagenet-head",
            "--model-name",
            "imagenet",
            "--model-base-path",
            str(base),
            "--run-dir",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    card = json.loads((base / "1" / "assets.extra" / "model_card.json").read_text())
    assert card["head"]["kind"] == "imagenet (pretrained classifier)"
    assert len(card["classes"]) == 1000 and card["classes"][388] == "giant panda"
    assert card["gate"]["max_abs_diff"]["serving_default/scores"] <= 1e-5
    # The ImageNet evaluation crop the classifier was measured with, by default.
    assert card["preprocessing"]["resize_mode"]["mode"] == "center_crop"
    assert card["preprocessing"]["version"] == "4"

    port = free_port()
    server = start_server([f"--port={port}", "--model_name=imagenet", f"--model_base_path={base}"])
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{port}")
        )
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "imagenet"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([PHOTO.read_bytes()]))
        response = stub.Predict(request, timeout=60)
    finally:
        server.stop()
    assert response.model_spec.version.value == 1
    labels = [s.decode() for s in tf.make_ndarray(response.outputs["labels"])[0]]
    assert "military uniform" in labels  # Grace Hopper in her US Navy uniform (crop: third)
