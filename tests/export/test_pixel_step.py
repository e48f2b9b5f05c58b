"""The contract's pixel step on its own (preprocessing version 3): bytes -> uint8 [S, S, 3], then
the normalisation; a client calls the first step, the exported graph's serving_pixels the second."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from imagegen import encode
from PIL import Image

from export.model.backbones import BackboneConfig
from export.model.pixels import EagerPixels, error_reason, image_pixels
from export.model.preprocessing import EagerPreprocessor, Preprocessor

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(3)


def noise(width: int, height: int) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8))


IMAGES = {
    "png": encode(noise(97, 61), "PNG"),
    "jpeg_reduced_dct": encode(noise(1000, 800), "JPEG", quality=90),
    "wide_png_in_bands": encode(noise(15000, 4), "PNG"),
    "palette_bmp": encode(noise(90, 40).convert("P"), "BMP"),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_pixels_then_normalisation_is_the_contract_to_the_bit(name):
    pre = Preprocessor(BackboneConfig("mobilenet_v2", weights="none", image_size=96, alpha=0.35))
    pixels, reason = EagerPixels(96)(IMAGES[name])
    assert reason is None and pixels.dtype == np.uint8 and pixels.shape == (96, 96, 3)
    whole = EagerPreprocessor(pre)(IMAGES[name])[0]
    np.testing.assert_array_equal(pre.normalise(tf.constant(pixels)).numpy(), whole)
    # A batch of pixels (what serving_pixels gets) normalises as each image does.
    batch = pre.normalise(tf.constant(np.stack([pixels, pixels]))).numpy()
    np.testing.assert_array_equal(batch[1], whole)


def test_the_resize_is_rounded_half_to_even():
    # 2x2 -> 1x1 averages each row pair: 10.5 rounds to 10, 11.5 to 12, 20.25 to 20.
    picture = np.array([[[10, 11, 20], [11, 12, 21]]] * 2, np.uint8)  # [2, 2, 3]
    picture[1, 1, 2] = 20  # (20 + 21 + 20 + 20) / 4 = 20.25
    pixels = image_pixels(encode(Image.fromarray(picture), "PNG"), 1).numpy()
    assert pixels.tolist() == [[[10, 12, 20]]]


def test_refusals_read_as_the_whole_contract_reads_them():
    pre = EagerPreprocessor(Preprocessor(BackboneConfig("tiny", weights="none"), max_pixels=1000))
    pixel_step = EagerPixels(32, max_pixels=1000)
    for data in [b"hello", IMAGES["png"][:100], encode(noise(50, 40), "PNG")]:
        assert pixel_step(data)[0] is None
        assert pixel_step(data)[1] == pre(data)[1]
    assert pixel_step(encode(noise(50, 40), "PNG"))[1] == (
        "image is 50x40 = 2000 pixels, over the limit of 1000 (max_pixels)"
    )


def test_the_pixel_step_imports_no_model_code():
    # What `xfer-score --preprocess client` loads next to a serving cluster: TensorFlow (which the
    # client imports anyway for its protos), not the backbones and their weights.
    code = (
        "import sys; from export.model.pixels import EagerPixels; "
        "print(sorted(m for m in sys.modules if m.startswith('export.') and m not in "
        "('export.contract', 'export.model', 'export.model.pixels', 'export.model.image_headers',"
        " 'export.model.resize', 'export.model.resize_mode', 'export.model.names')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_refusal_in_a_branch_function_reads_as_one_line():
    # What the client's traced pixel step raises for a corrupt JPEG: the failing op sits in a
    # switch_case branch, which TensorFlow names as a function before the node.
    message = (
        "{{function_node __inference_<lambda>_1206}} Invalid JPEG data, size 19\n\t "
        "[[{{function_node switch_case_indexed_case_branch1_122}}{{node switch_case/"
        "indexed_case/ExtractJpegShape}}]] [Op:__inference_<lambda>_1206]"
    )
    exc = tf.errors.InvalidArgumentError(None, None, message)
    assert error_reason(exc) == "not a decodable image: Invalid JPEG data, size 19"
    assert EagerPixels(32)(b"\xff\xd8\xff\xe0 truncated jpeg")[1] == error_reason(exc)
