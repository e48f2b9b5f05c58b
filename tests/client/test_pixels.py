"""`xfer-score --preprocess client`: the contract's pixel step on the client, pixels to
serving_pixels; the same rows as `--preprocess server` (scores within 1e-5, the same errors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from imagegen import COLOURS, encode, square_image
from PIL import Image
from testconfig import MODEL

from client.cli import main
from client.config import ScoreConfig
from client.pixels import ModelMetadata, PixelsUnavailable
from client.scorer import PixelsRefused, Scorer
from client.transport import Prediction


def rows_by_uri(path: Path) -> dict[str, dict]:
    return {r["uri"]: r for r in map(json.loads, path.read_text().splitlines())}


def assert_same_rows(server: dict[str, dict], client: dict[str, dict], tolerance=1e-5) -> None:
    assert server.keys() == client.keys()
    for uri, row in server.items():
        other = client[uri]
        assert row.get("error") == other.get("error"), uri
        if "error" in row:
            continue
        assert row["labels"] == other["labels"], uri
        assert row["model_version"] == other["model_version"], uri
        np.testing.assert_allclose(row["scores"], other["scores"], atol=tolerance, rtol=0)


def smooth_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photograph-like picture (smooth gradients and a red square), much larger than S."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    base += (
        rng.normal(0, 6, (height // 50 + 1, width // 50 + 1, 3))
        .repeat(50, 0)
        .repeat(50, 1)[:height, :width]
    )
    base[height // 3 : height // 2, width // 3 : width // 2] = COLOURS["red"]
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def mixed_folder(good_images, tmp_path_factory) -> Path:
    """Small images of each class, a 3000x2000 JPEG (decoded at a reduced DCT scale), a wide
    PNG (resized in bands), a corrupt JPEG, a file that is not an image and one over the pixel
    limit (refused before decoding)."""
    root = tmp_path_factory.mktemp("mixed")
    for path in good_images[::7]:
        shutil.copyfile(path, root / f"{path.parent.name}_{path.name}")
    (root / "photo_3000x2000.jpg").write_bytes(encode(smooth_photo(3000, 2000), "JPEG"))
    (root / "wide.png").write_bytes(encode(smooth_photo(7000, 30, seed=1), "PNG"))
    (root / "square.png").write_bytes(encode(square_image(COLOURS["blue"], 300), "PNG"))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (root / "notes.png").write_bytes(b"not an image at all")
    (root / "bomb.png").write_bytes(encode(Image.new("L", (6400, 6400)), "PNG"))
    return root


def score(folder: Path, out: Path, target: str, *extra: str) -> int:
    return main(
        [str(folder), "--target", target, "--model-name", MODEL, "--output", str(out),
         "--quiet", "--batch-size", "8", *extra]
    )  # fmt: skip


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_client_preprocessing_gives_the_server_rows(
    protocol, target, rest_target, mixed_folder, tmp_path
):
    where = target if protocol == "grpc" else rest_target
    by_server, by_client = tmp_path / "server.jsonl", tmp_path / "client.jsonl"
    common = ("--protocol", protocol)
    assert score(mixed_folder, by_server, where, *common) == 3
    assert score(mixed_folder, by_client, where, *common, "--preprocess", "client") == 3
    server, client = rows_by_uri(by_server), rows_by_uri(by_client)
    assert_same_rows(server, client)
    errors = {Path(uri).name: row["error"] for uri, row in client.items() if "error" in row}
    assert set(errors) == {"broken.jpg", "notes.png", "bomb.png"}
    assert errors["bomb.png"] == (
        "INVALID_ARGUMENT: image is 6400x6400 = 40960000 pixels, over the limit of 40000000 "
        "(max_pixels)"
    )
    assert errors["notes.png"].startswith("INVALID_ARGUMENT: not a decodable image: unknown format")
    photo = client[str(mixed_folder / "photo_3000x2000.jpg")]
    assert photo["labels"][0] == "red"


def test_pixels_go_around_the_file_size_limit(target, mixed_folder, tmp_path):
    """A 3000x2000 JPEG over --max-message-mb as a file is 32x32x3 bytes as pixels."""
    photo = mixed_folder / "photo_3000x2000.jpg"
    limit = str(photo.stat().st_size / 2 / 2**20)
    by_server, by_client = tmp_path / "server.jsonl", tmp_path / "client.jsonl"
    assert score(photo, by_server, target, "--max-message-mb", limit) == 3
    assert "over the limit" in rows_by_uri(by_server)[str(photo)]["error"]
    assert score(photo, by_client, target, "--max-message-mb", limit, "--preprocess", "client") == 0


def test_a_model_without_serving_pixels_is_refused_with_exit_2(tmp_path, capsys):
    """A model exported before preprocessing version 3 (no serving_pixels): exit 2, no rows."""
    import tensorflow as tf
    from servertools import free_port, start_server

    class Old(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            n = tf.shape(image_bytes)[:1]
            return {"labels": tf.fill(tf.concat([n, [1]], 0), "x"),
                    "top_scores": tf.ones(tf.concat([n, [1]], 0))}  # fmt: skip

    old = Old()
    tf.saved_model.save(old, str(tmp_path / "old" / "1"), signatures={"serving_default": old.serve})
    port = free_port()
    base = f"--model_base_path={tmp_path / 'old'}"
    server = start_server([f"--port={port}", "--model_name=old", base])
    try:
        image = tmp_path / "a.png"
        image.write_bytes(encode(square_image(COLOURS["red"]), "PNG"))
        out = tmp_path / "s.jsonl"
        argv = [str(image), "--target", f"127.0.0.1:{port}", "--model-name", "old",
                "--output", str(out), "--quiet"]  # fmt: skip
        assert main([*argv, "--preprocess", "client"]) == 2
        err = capsys.readouterr().err
        assert "model 'old' version 1 has no serving_pixels signature" in err
        assert (
            "exported before preprocessing version 3; re-export or use --preprocess server" in err
        )
        assert not out.exists() or out.read_text() == ""
        assert main(argv) == 0  # the bytes path still scores it
    finally:
        server.stop(0)


class FakeServer:
    """A transport for the discovery logic alone: serving_pixels at 32, a given contract."""

    def __init__(self, contracts: list[str]):
        self.contracts = contracts

    def metadata(self, attempt=0):
        return ModelMetadata(4, {"serving_pixels": {"pixels": ("DT_UINT8", [-1, 32, 32, 3])}})

    def predict(self, images, attempt=0, size=None):
        contract = self.contracts.pop(0) if len(self.contracts) > 1 else self.contracts[0]
        n = len(images)
        return Prediction([["red"]] * n, [[1.0]] * n, 4, [contract] * n)

    def close(self):
        pass


CONTRACT = '{"version":"3","image_size":32,"max_pixels":40000000}'


def config() -> ScoreConfig:
    return ScoreConfig(inputs=["x"], target=["t"], model_name="m", preprocess="client")


@pytest.mark.parametrize(
    "contract, reason",
    [
        (CONTRACT.replace('"3"', '"5"'), r"version 5, .* \(it makes versions 3 and 4\)"),
        # Version 4 names its resize mode; without one it would be version 3's squash.
        (CONTRACT.replace('"3"', '"4"'), r"version 4, .* \(resize squash is version 3\)"),
    ],
)
def test_a_model_of_another_contract_version_is_refused(contract, reason):
    with pytest.raises(PixelsRefused, match=reason):
        Scorer(config(), transport=FakeServer([contract])).pixel_step()


def test_a_contract_changed_during_the_run_stops_it(good_images):
    from client.inputs import Item

    other = CONTRACT.replace("40000000", "1000")
    scorer = Scorer(config(), transport=FakeServer([CONTRACT, CONTRACT, other]))
    items = [Item(uri=str(p), data=p.read_bytes()) for p in good_images[:2]]
    assert [r["labels"] for r in scorer.score_batch(items)] == [["red"], ["red"]]
    with pytest.raises(PixelsRefused, match="as at the start of the run"):
        scorer.score_batch(items)


def test_flags_of_the_bytes_path_are_refused_with_client_preprocessing():
    with pytest.raises(ValueError, match="--signature and --input-key"):
        config().replace(signature="embedding").validate()
    assert issubclass(PixelsUnavailable, ValueError)
