"""`--preprocess client` on the demo's backbone (EfficientNet-Lite0 at 224, ImageNet weights, here
with its ImageNet head: 1000 scores to agree on) and on photos much larger than its input:
generated 3000x2000 and 5000x3600 JPEGs (decoded at 1/2 and 1/4 DCT scale) and the real
photographs that ship in installed packages, some enlarged the same way."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib
import pytest
from imagegen import encode
from PIL import Image
from test_pixels import assert_same_rows, rows_by_uri, smooth_photo

from client.cli import main


def shipped_photos() -> dict[str, bytes]:
    """Photographs in installed packages (matplotlib's always; scikit-image's and
    scikit-learn's where installed)."""
    paths = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
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
    assert card["gate"]["max_abs_diff"]["serving_pixels/scores"] <= 1e-5

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
    assert hopper["labels"][0] == "military uniform"
