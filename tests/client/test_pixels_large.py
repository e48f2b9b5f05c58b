"""The pretrained ImageNet classifier as a user publishes, serves and scores it: `xfer-export
--imagenet-head` (EfficientNet-Lite0 at 224, ImageNet weights, the evaluation crop by default),
queried through the local server over gRPC, then `xfer-score --preprocess client` against
`server` on photos much larger than its input: generated 3000x2000 and 5000x3600 JPEGs (decoded
at 1/2 and 1/4 DCT scale) and the real photographs that ship in installed packages, some
enlarged the same way. One export for both checks: it is the slowest step on 2 cores."""

from __future__ import annotations

import io
import json
from pathlib import Path

import grpc
import matplotlib
import pytest
import tensorflow as tf
from imagegen import encode
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from test_pixels import assert_same_rows, rows_by_uri, smooth_photo

from client.cli import main

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def shipped_photos() -> dict[str, bytes]:
    """Photographs in installed packages (matplotlib's always; scikit-image's and
    scikit-learn's where installed)."""
    paths = [GRACE_HOPPER]
    try:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        paths += [data / n for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")]
    except ImportError:
        pass
    try:
        import sklearn

        paths += sorted((Path(sklearn.__file__).parent / "datasets" / "images").glob("*.jpg"))
    except ImportError:
        pass
    return {p.name: p.read_bytes() for p in paths if p.exists()}


@pytest.mark.slow
def test_client_preprocessing_on_efficientnet_lite0_and_large_photos(tmp_path, monkeypatch):
    from servertools import free_port, start_server

    from export.cli.export import main as export_main

    monkeypatch.setenv("XFER_CACHE_DIR", str(tmp_path / "cache"))
    base = tmp_path / "models" / "imagenet"
    assert export_main(["--imagenet-head", "--model-name", "imagenet", "--model-base-path",
                        str(base), "--run-dir", str(tmp_path / "run")]) == 0  # fmt: skip
    card = json.loads((base / "1" / "assets.extra" / "model_card.json").read_text())
    assert card["head"]["kind"] == "imagenet (pretrained classifier)"
    assert len(card["classes"]) == 1000 and card["classes"][388] == "giant panda"
    assert card["gate"]["max_abs_diff"]["serving_default/scores"] <= 1e-5
    assert card["gate"]["max_abs_diff"]["serving_pixels/scores"] <= 1e-5
    # The ImageNet evaluation crop the classifier was measured with, by default.
    assert card["preprocessing"]["resize_mode"]["mode"] == "center_crop"
    assert card["preprocessing"]["version"] == "4"

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "gradient_3000x2000.jpg").write_bytes(encode(smooth_photo(3000, 2000), "JPEG"))
    (photos / "gradient_5000x3600.jpg").write_bytes(encode(smooth_photo(5000, 3600, 2), "JPEG"))
    for name, data in shipped_photos().items():
        (photos / f"{name}.jpg").write_bytes(data)
        picture = Image.open(io.BytesIO(data)).convert("RGB")
        big = picture.resize((3000, 2000), Image.BICUBIC)
        (photos / f"{name}_3000x2000.jpg").write_bytes(encode(big, "JPEG", quality=90))
    assert len(list(photos.iterdir())) >= 4

    port = free_port()
    server = start_server([f"--port={port}", "--model_name=imagenet", f"--model_base_path={base}"])
    try:
        response = predict_one(port, GRACE_HOPPER.read_bytes())
        assert response.model_spec.version.value == 1
        labels = [s.decode() for s in tf.make_ndarray(response.outputs["labels"])[0]]
        assert "military uniform" in labels  # in her US Navy uniform (the crop ranks it third)
        rows = {}
        for mode in ("server", "client"):
            out = tmp_path / f"{mode}.jsonl"
            code = main([str(photos), "--target", f"127.0.0.1:{port}", "--model-name", "imagenet",
                         "--output", str(out), "--quiet", "--preprocess", mode])  # fmt: skip
            assert code == 0
            rows[mode] = rows_by_uri(out)
    finally:
        server.stop(0)
    assert_same_rows(rows["server"], rows["client"], tolerance=1e-5)
    hopper = rows["client"][str(photos / "grace_hopper.jpg.jpg")]
    assert hopper["labels"] == labels[: len(hopper["labels"])]  # the same answer as Predict's


def predict_one(port: int, image: bytes):
    """A raw TF Serving Predict, as a user's own gRPC code would send it."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "imagenet"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.Predict(request, timeout=60)
