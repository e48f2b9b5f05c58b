"""center_crop through every stage: the Beam job, training from its bottlenecks, the exported graph
and the client's pixel step give the same features for the same bytes (<= 1e-5), on images taller
than wide, wider than tall and smaller than the crop; and the trainer refuses bottlenecks of
another mode, naming both."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from imagegen import COLOURS, encode
from PIL import Image
from testconfig import FAST_TRAINING, TINY, bottleneck_args

from export.model.backbones import BackboneConfig, build_feature_extractor
from export.model.preprocessing import EagerPreprocessor, Preprocessor
from export.model.resize_mode import ResizeMode

SHAPES = [(30, 70), (70, 30), (20, 14), (48, 48)]  # tall, wide, smaller than the crop, square


def framed(colour, width: int, height: int, rng) -> Image.Image:
    """A coloured patch over the centre of a noisy grey picture: what a center crop keeps."""
    pixels = rng.normal(rng.integers(90, 160), 12, (height, width, 3))
    h, w = max(2, height // 2), max(2, width // 2)
    top, left = (height - h) // 2, (width - w) // 2
    pixels[top : top + h, left : left + w] = np.asarray(colour) + rng.normal(0, 8, 3)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def crop_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crop_images")
    rng = np.random.default_rng(18)
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for i in range(8):
            image = framed(colour, *SHAPES[i % len(SHAPES)], rng)
            fmt = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
            (root / name / f"img_{i}.{fmt[1]}").write_bytes(encode(image, fmt[0]))
    return root


@pytest.fixture(scope="module")
def crop_bottlenecks(crop_images, tmp_path_factory) -> Path:
    from beam_jobs.bottlenecks import run

    out = tmp_path_factory.mktemp("crop_bottlenecks")
    run(bottleneck_args(crop_images, out, "--resize", "center_crop", "--num_shards", "1"))
    return out


@pytest.fixture(scope="module")
def crop_export(crop_bottlenecks, tmp_path_factory):
    """Trained from the bottlenecks (no --resize: their mode is taken), exported, gated."""
    from export.publishing.exporter import ExportConfig, export_model

    config = ExportConfig(
        bottlenecks=str(crop_bottlenecks),
        run_dir=str(tmp_path_factory.mktemp("crop_run")),
        model_name="crop",
        model_base_path=str(tmp_path_factory.mktemp("crop_models") / "crop"),
        warmup_images=2,
        gate_images=8,
        **FAST_TRAINING,
    )
    return export_model(config)


def beam_rows(out: Path) -> dict[str, np.ndarray]:
    from export.features.bottleneck_schema import decode_example

    meta = json.loads((out / "metadata.json").read_text())
    files = [str(out / name) for name in meta["shards"]]
    rows = [
        decode_example(r.numpy(), meta["feature_dim"])
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
    ]
    return {r["image/uri"].decode(): r["features"] for r in rows}


def test_the_bottlenecks_record_the_mode_and_version_4(crop_bottlenecks):
    meta = json.loads((crop_bottlenecks / "metadata.json").read_text())
    crop = {"mode": "center_crop", "crop_padding": 32, "interpolation": "bicubic"}
    assert meta["backbone"]["resize"] == crop
    assert meta["preprocessing_version"] == "4" == meta["preprocessing"]["version"]
    assert meta["preprocessing"]["resize_mode"] == crop and meta["total"] == 24


def test_beam_features_are_the_in_process_ones_and_not_squashs(crop_bottlenecks):
    rows = beam_rows(crop_bottlenecks)
    config = BackboneConfig(TINY["backbone"], TINY["weights"], resize=ResizeMode("center_crop"))
    extractor = build_feature_extractor(config)

    def features(backbone):
        preprocess = EagerPreprocessor(Preprocessor(backbone))
        images = np.stack([preprocess(Path(uri).read_bytes())[0] for uri in rows])
        return np.asarray(extractor(images, training=False))

    got = np.stack(list(rows.values()))
    assert np.max(np.abs(got - features(config))) <= 1e-5
    squashed = features(dataclasses.replace(config, resize=ResizeMode()))
    assert np.max(np.abs(got - squashed)) > 1e-2  # the mode was applied


def test_the_served_graph_and_the_client_make_the_same_features(crop_bottlenecks, crop_export):
    from client.pixels import ClientPixels, PixelContract
    from export.contract import PREPROCESSING_OUTPUT

    card = json.loads((crop_export.path / "assets.extra" / "model_card.json").read_text())
    assert card["backbone"]["resize"]["mode"] == "center_crop"
    assert card["preprocessing"]["version"] == "4"
    assert crop_export.train.config.resize == "center_crop"  # taken from the bottlenecks
    rows = beam_rows(crop_bottlenecks)
    data = [Path(uri).read_bytes() for uri in rows]
    loaded = tf.saved_model.load(str(crop_export.path))
    served = loaded.signatures["embedding"](image_bytes=tf.constant(data))["features"].numpy()
    assert np.max(np.abs(served - np.stack(list(rows.values())))) <= 1e-5

    # The client learns the mode from serving_pixels' own output and makes the graph's pixels.
    size = card["backbone"]["input_size"]
    probe = loaded.signatures["serving_pixels"](pixels=tf.zeros([1, size, size, 3], tf.uint8))
    text = probe[PREPROCESSING_OUTPUT].numpy()[0].decode()
    assert json.loads(text)["resize"] == "center_crop"
    step = ClientPixels(PixelContract.parse(text), size)
    items, refused = step.prepare([_Item(d) for d in data])
    assert refused == []
    pixels = np.stack([np.frombuffer(i.data, np.uint8).reshape(size, size, 3) for i in items])
    by_pixels = loaded.signatures["serving_pixels"](pixels=tf.constant(pixels))["scores"]
    by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(data))["scores"]
    assert np.max(np.abs(by_pixels.numpy() - by_bytes.numpy())) <= 1e-5


@dataclasses.dataclass(frozen=True)
class _Item:
    data: bytes


def test_training_refuses_bottlenecks_of_another_mode(crop_bottlenecks, tmp_path):
    from export.training.config import TrainConfig
    from export.training.train import train

    config = TrainConfig(bottlenecks=str(crop_bottlenecks), run_dir=str(tmp_path), resize="squash")
    with pytest.raises(ValueError) as info:
        train(dataclasses.replace(config, **FAST_TRAINING))
    assert "bottlenecks computed with resize center_crop (padding 32, bicubic), but this run" in (
        str(info.value)
    )
    assert "asks for resize squash" in str(info.value)


def test_bottlenecks_written_before_the_mode_train_as_squash(bottlenecks_dir, tmp_path):
    from export.features.sources import TFRecordFeatures
    from export.training.config import TrainConfig
    from export.training.train import _config_from_bottlenecks

    old = tmp_path / "old"
    shutil.copytree(bottlenecks_dir, old)
    meta = json.loads((old / "metadata.json").read_text())
    del meta["backbone"]["resize"], meta["preprocessing"]["resize_mode"]
    (old / "metadata.json").write_text(json.dumps(meta))
    for asked in (None, "squash"):
        config = TrainConfig(bottlenecks=str(old), resize=asked)
        assert _config_from_bottlenecks(config, TFRecordFeatures(str(old))).resize == "squash"
    with pytest.raises(ValueError, match="computed with resize squash, but this run asks for"):
        _config_from_bottlenecks(
            TrainConfig(bottlenecks=str(old), resize="center_crop"), TFRecordFeatures(str(old))
        )
    # Crop flags without --resize are not dropped in silence when the bottlenecks disagree.
    for flags in ({"crop_padding": 0}, {"crop_interpolation": "bilinear"}):
        with pytest.raises(ValueError, match="given without --resize, and the bottlenecks"):
            _config_from_bottlenecks(
                TrainConfig(bottlenecks=str(old), **flags), TFRecordFeatures(str(old))
            )
