import io

import numpy as np
import pytest
import tensorflow as tf
from imagegen import encode
from PIL import Image

from export.model.backbones import BackboneConfig, get_spec, names
from export.model.preprocessing import (
    NORMALIZATIONS,
    EagerPreprocessor,
    Preprocessor,
    decode_image,
    error_reason,
)

RNG = np.random.default_rng(1)
RGB = Image.fromarray(RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8))


def pil_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


CASES = {
    "jpeg": encode(RGB, "JPEG", quality=90),
    "jpeg_grayscale": encode(RGB.convert("L"), "JPEG"),
    "jpeg_cmyk": encode(RGB.convert("CMYK"), "JPEG"),
    "png_rgb": encode(RGB, "PNG"),
    "png_grayscale": encode(RGB.convert("L"), "PNG"),
    "png_grayscale_alpha": encode(RGB.convert("LA"), "PNG"),
    "png_rgba": encode(RGB.convert("RGBA"), "PNG"),
    "png_palette": encode(RGB.convert("P"), "PNG"),
    "gif": encode(RGB.convert("P"), "GIF"),
    "bmp_24bit": encode(RGB, "BMP"),
    "bmp_palette": encode(RGB.convert("P"), "BMP"),
    "bmp_grayscale": encode(RGB.convert("L"), "BMP"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_decodes_every_format_and_colour_mode_to_rgb_like_pillow(name):
    data = CASES[name]
    decoded = decode_image(tf.constant(data)).numpy()
    assert decoded.shape == (40, 50, 3) and decoded.dtype == np.uint8
    # CMYK JPEGs: libjpeg's and Pillow's CMYK->RGB rounding differ by at most a step or two.
    tolerance = 2 if name == "jpeg_cmyk" else 0
    assert np.abs(decoded.astype(int) - pil_rgb(data)).max() <= tolerance


def test_png_16_bit_keeps_the_high_byte():
    samples = RNG.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    grey = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    rgb16 = tf.io.encode_png(samples).numpy()
    grey16 = encode(Image.fromarray(grey), "PNG")
    assert Image.open(io.BytesIO(grey16)).mode == "I;16"
    np.testing.assert_array_equal(decode_image(rgb16).numpy(), samples >> 8)
    np.testing.assert_array_equal(decode_image(grey16).numpy()[..., 1], grey >> 8)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), c).convert("P") for c in ("red", "blue", "green")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    decoded = decode_image(buf.getvalue()).numpy()
    assert decoded.shape == (16, 16, 3)
    assert tuple(decoded[8, 8]) == (255, 0, 0)


def _png_header_claiming(width: int, height: int) -> bytes:
    real = encode(Image.new("RGB", (4, 4)), "PNG")
    return real[:16] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + real[24:]


def test_pixel_guard_refuses_from_the_header_before_decoding():
    # The header says 100000 x 100000; the data is a 4x4 image. A decoder would fail on the data;
    # the guard must refuse on the header alone, naming the size and the limit.
    bomb = _png_header_claiming(100_000, 100_000)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        decode_image(bomb)
    assert error_reason(info.value) == (
        "image is 100000x100000 = 10000000000 pixels, over the limit of 40000000 (max_pixels)"
    )


def test_pixel_guard_on_a_real_large_image_and_configurable_limit():
    big = encode(Image.new("L", (8000, 6000)), "PNG")  # 48 MP: a compressed bomb of ~50 KB
    assert len(big) < 200_000
    _, reason = EagerPreprocessor(Preprocessor(BackboneConfig("tiny", weights="none")))(big)
    assert reason.startswith("image is 8000x6000 = 48000000 pixels, over the limit of 40000000")
    small = Preprocessor(BackboneConfig("tiny", weights="none"), max_pixels=1000)
    _, reason = EagerPreprocessor(small)(CASES["jpeg"])
    assert reason == "image is 50x40 = 2000 pixels, over the limit of 1000 (max_pixels)"
    for fmt in ("gif", "bmp_24bit", "png_rgb"):
        assert EagerPreprocessor(small)(CASES[fmt])[1].startswith("image is 50x40")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "not a decodable image: unknown format (expected JPEG, PNG, GIF or BMP)"),
        (b"hello, world", "not a decodable image: unknown format (expected JPEG, PNG, GIF or BMP)"),
        (CASES["png_rgb"][:100], "not a decodable image: Invalid PNG data, size 100"),
        (CASES["jpeg"][:300], "not a decodable image: Invalid JPEG data, size 300"),
        (encode(RGB.convert("1"), "BMP"), "BMP with 1 bits per pixel is not supported"),
    ],
)
def test_undecodable_input_gives_a_one_line_reason(data, reason):
    image, got = EagerPreprocessor(Preprocessor(BackboneConfig("tiny", weights="none")))(data)
    assert image is None
    assert got == reason


def test_resize_and_backbone_normalisation():
    pre = Preprocessor(BackboneConfig("mobilenet_v2", weights="none", image_size=64))
    out = pre(tf.constant(encode(Image.new("RGB", (300, 200), (255, 0, 128)), "PNG"))).numpy()
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(out[10, 10], [1.0, -1.0, 128 / 127.5 - 1], atol=1e-6)
    vgg = Preprocessor(BackboneConfig("vgg16", weights="none", image_size=32))
    out = vgg(tf.constant(encode(Image.new("RGB", (32, 32), (255, 0, 128)), "PNG"))).numpy()
    # caffe mode: RGB -> BGR, minus the ImageNet mean.
    np.testing.assert_allclose(out[0, 0], [128 - 103.939, 0 - 116.779, 255 - 123.68], atol=1e-4)


def test_one_image_gives_identical_model_inputs_on_every_path():
    """Eager (Beam, trainer), tf.data, and the batched map_fn of the exported graph."""
    pre = Preprocessor(BackboneConfig("mobilenet_v2", weights="none", image_size=96, alpha=0.35))
    # A JPEG large enough to be decoded at a reduced DCT scale, a palette BMP and a PNG wide
    # enough to be resized in bands, and a GIF (cut after its first frame) too.
    large_jpeg = encode(RGB.resize((1000, 800)), "JPEG", quality=90)
    wide_png = encode(RGB.resize((15000, 4)), "PNG")
    images = [CASES[name] for name in ("jpeg", "png_palette", "bmp_24bit", "bmp_palette", "gif")]
    images += [large_jpeg, wide_png]
    eager_step = EagerPreprocessor(pre)  # traced once
    eager = np.stack([eager_step(i)[0] for i in images])
    dataset = np.stack(
        list(tf.data.Dataset.from_tensor_slices(images).map(pre).as_numpy_iterator())
    )
    graph = tf.function(pre.batch, input_signature=[tf.TensorSpec([None], tf.string)])
    batched = graph(tf.constant(images)).numpy()
    np.testing.assert_array_equal(eager, dataset)
    np.testing.assert_array_equal(eager, batched)


@pytest.mark.parametrize("name", names())
def test_normalisation_matches_the_backbones_keras_preprocess_input(name):
    spec = get_spec(name)
    pixels = RNG.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
    ours = NORMALIZATIONS[spec.normalization][1](tf.constant(pixels)).numpy()
    keras_own = np.asarray(spec.preprocess_input(pixels.copy()))
    np.testing.assert_allclose(ours, keras_own, rtol=1e-6, atol=1e-5)
