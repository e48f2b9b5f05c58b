"""The contract's center_crop resize mode (preprocessing version 4): the ImageNet evaluation crop,
made in one resampling of the decoded image, on every path; and squash left as version 3 made it.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from imagegen import encode
from PIL import Image

from export.model import resize
from export.model.backbones import BackboneConfig
from export.model.pixels import EagerPixels, contract_resize, image_pixels
from export.model.preprocessing import EagerPreprocessor, Preprocessor
from export.model.resize_mode import ResizeMode

RNG = np.random.default_rng(18)
CROP = ResizeMode("center_crop")
TINY_CROP = BackboneConfig("tiny", weights="none", resize=CROP)  # 32 x 32: the crop is half


def photo(width: int, height: int) -> Image.Image:
    """Smooth noise: a resampling's error shows, but no value sits on a rounding edge by design."""
    small = RNG.integers(0, 256, (max(2, height // 4), max(2, width // 4), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


def pillow_crop(image: Image.Image, size: int, padding: int, interpolation: str) -> np.ndarray:
    """The same crop by Pillow, in float: the box of the central size / scale pixels, the
    shorter side's scale (size + padding) / shorter, resampled with Pillow's own antialiased
    filter; rounded as the contract rounds."""
    w, h = image.size
    side = size * min(w, h) / (size + padding)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    kind = Image.BICUBIC if interpolation == "bicubic" else Image.BILINEAR
    planes = [
        np.asarray(
            Image.fromarray(band.astype(np.float32), "F").resize((size, size), kind, box=box)
        )
        for band in np.moveaxis(np.asarray(image), -1, 0)
    ]
    return np.clip(np.round(np.stack(planes, -1)), 0, 255)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize(
    "width, height", [(97, 61), (61, 97), (20, 13)], ids=["wide", "tall", "smaller_than_crop"]
)
def test_center_crop_is_the_central_square_of_the_shorter_side(width, height, interpolation):
    image = photo(width, height)
    mode = ResizeMode("center_crop", 8, interpolation)
    got = image_pixels(encode(image, "PNG"), 32, resize=mode).numpy().astype(int)
    expected = pillow_crop(image, 32, 8, interpolation)
    # Pillow and TensorFlow sum the same kernel in another order: at most one grey level apart.
    assert np.abs(got - expected).max() <= 1
    assert np.mean(got == expected) > 0.98


@pytest.mark.parametrize("width, height", [(3000, 7), (7, 3000), (200, 70)])
def test_bands_give_the_one_call_crop(width, height, monkeypatch):
    # The bands path (wide images, palettes) resamples the same crop: equal up to float rounding.
    data = encode(photo(width, height), "PNG")
    one_call = image_pixels(data, 32, resize=CROP).numpy().astype(int)
    monkeypatch.setattr(resize, "RESIZE_WORKSPACE_BYTES", 100)
    banded = image_pixels(data, 32, resize=CROP).numpy().astype(int)
    assert np.abs(banded - one_call).max() <= 1 and np.mean(banded == one_call) > 0.99


@pytest.mark.parametrize("width, height", [(90, 40), (40, 90)])
def test_palette_bmp_crop_is_the_rgb_crop(width, height):
    picture = photo(width, height).quantize(64)
    paletted = image_pixels(encode(picture, "BMP"), 32, resize=CROP).numpy().astype(int)
    rgb = image_pixels(encode(picture.convert("RGB"), "BMP"), 32, resize=CROP).numpy()
    assert np.abs(paletted - rgb).max() <= 1 and np.mean(paletted == rgb) > 0.99


def test_a_large_jpeg_is_cropped_from_its_reduced_dct_decode():
    # 600 x 520 at input size 32: decoded at 1/4 (the shorter side stays >= 4 x 32), then the
    # crop of that decode, to the bit.
    data = encode(photo(600, 520), "JPEG", quality=90)
    quarter = tf.io.decode_jpeg(data, channels=3, ratio=4, dct_method="INTEGER_ACCURATE")
    reference = encode(Image.fromarray(quarter.numpy()), "PNG")
    got = image_pixels(data, 32, resize=CROP).numpy()
    np.testing.assert_array_equal(got, image_pixels(reference, 32, resize=CROP).numpy())


def test_every_path_makes_the_same_crop_to_the_bit():
    """Eager (Beam, trainer, client), tf.data, and the batched map_fn of the exported graph."""
    pre = Preprocessor(TINY_CROP)
    images = [encode(photo(*shape), "PNG") for shape in ((97, 61), (61, 97), (20, 13))]
    images += [encode(photo(600, 520), "JPEG"), encode(photo(40, 90).quantize(64), "BMP")]
    eager_step = EagerPreprocessor(pre)
    eager = np.stack([eager_step(i)[0] for i in images])
    dataset = np.stack(
        list(tf.data.Dataset.from_tensor_slices(images).map(pre).as_numpy_iterator())
    )
    graph = tf.function(pre.batch, input_signature=[tf.TensorSpec([None], tf.string)])
    np.testing.assert_array_equal(eager, dataset)
    np.testing.assert_array_equal(eager, graph(tf.constant(images)).numpy())
    # The client's pixel step, then serving_pixels' normalisation: the same input again.
    client_step = EagerPixels(32, resize=CROP)
    pixels = np.stack([client_step(i)[0] for i in images])
    np.testing.assert_array_equal(pre.normalise(tf.constant(pixels)).numpy(), eager)
    assert not np.array_equal(pixels[0], image_pixels(images[0], 32).numpy())  # not squashed


def test_the_mode_is_recorded_and_old_records_read_as_squash():
    assert BackboneConfig.from_dict(TINY_CROP.to_dict()) == TINY_CROP
    assert TINY_CROP.to_dict()["resize"] == {
        "mode": "center_crop",
        "crop_padding": 32,
        "interpolation": "bicubic",
    }
    old = {k: v for k, v in TINY_CROP.to_dict().items() if k != "resize"}
    assert BackboneConfig.from_dict(old).resize == ResizeMode("squash")
    # A run's config.json from before the field is squash; a flag left out is the default.
    flat = {"backbone": "tiny", "weights": "none", "image_size": None, "feature_layer": None}
    flat["alpha"] = 1.0
    assert BackboneConfig.of(SimpleNamespace(**flat)).resize.mode == "squash"
    given = SimpleNamespace(**flat, resize=None, crop_padding=16, crop_interpolation="bilinear")
    crop = BackboneConfig.of(given, default_resize="center_crop").resize
    assert crop == ResizeMode("center_crop", 16, "bilinear")
    # Squash has no parameters: two squash modes are one.
    assert ResizeMode("squash", 8, "bilinear") == ResizeMode()
    with pytest.raises(ValueError, match="crop_padding must be an integer >= 0; received -1"):
        ResizeMode("center_crop", -1)


def test_the_served_contract_names_the_mode_and_squash_stays_version_3s():
    from export.publishing.savedmodel import pixels_contract

    squash = pixels_contract(Preprocessor(BackboneConfig("tiny", weights="none")))
    assert squash == '{"version":"3","image_size":32,"max_pixels":40000000}'
    crop = json.loads(pixels_contract(Preprocessor(TINY_CROP)))
    assert crop == {
        "version": "4",
        "image_size": 32,
        "max_pixels": 40000000,
        "resize": "center_crop",
        "crop_padding": 32,
        "interpolation": "bicubic",
    }
    assert contract_resize(crop) == CROP and contract_resize(json.loads(squash)) == ResizeMode()
    with pytest.raises(ValueError, match="resize center_crop .* is version 4"):
        contract_resize({**crop, "version": "3"})
    described = Preprocessor(TINY_CROP).describe()
    assert described["version"] == "4" and described["resize_mode"]["mode"] == "center_crop"
