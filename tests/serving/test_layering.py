"""serving/ stands alone: it imports nothing from export/, and what it shares with the exporter
(file names, TensorFlow's tag and signature names) is checked equal here, where both may be read."""

from __future__ import annotations

import io

import grpc
import pytest
import tensorflow as tf
from importscan import other_stages_imported
from PIL import Image

from export import contract
from export.model.preprocessing import decode_image, error_reason
from serving import errors, inference, loader
from serving.errors import from_tf_error, input_refused_reason


def test_serving_imports_nothing_from_the_other_stages():
    assert other_stages_imported("serving", {"export", "beam_jobs", "client"}) == []


def test_warmup_file_is_the_name_the_exporter_writes():
    assert loader.WARMUP_FILE == contract.WARMUP_FILE


def test_decode_scope_is_the_name_the_exporter_decodes_under():
    assert errors.DECODE_SCOPE == contract.DECODE_SCOPE


def test_tensorflow_constants_are_the_names_the_exporter_writes():
    assert tf.saved_model.SERVING == contract.SERVE_TAG
    assert inference.DEFAULT_SIGNATURE == contract.SERVING_DEFAULT
    assert inference.PREDICT_METHOD == contract.PREDICT_METHOD
    assert inference.CLASSIFY_METHOD == contract.CLASSIFY_METHOD


def _png(width: int, height: int, claimed: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "PNG")
    data = buffer.getvalue()
    if claimed:  # rewrite the IHDR size: a "pixel bomb" refused from its header
        data = data[:16] + claimed[0].to_bytes(4, "big") + claimed[1].to_bytes(4, "big") + data[24:]
    return data


def _bmp_1bit() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (8, 8)).save(buffer, "BMP")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tf_errors() -> list[Exception]:
    """Errors of the exported decode step on bad inputs: in a TF1 session (as the server runs
    it), eagerly and in a tf.function; plus hand-made messages for the other clean-up rules."""
    refused = [b"", b"hello, world", _png(4, 4)[:40], _png(4, 4, (100_000, 100_000)), _bmp_1bit()]
    errors: list[Exception] = []
    graph = tf.Graph()
    with graph.as_default():
        contents = tf.compat.v1.placeholder(tf.string, [])
        image = decode_image(contents)
    session = tf.compat.v1.Session(graph=graph)  # not as a context: that would make it default
    traced = tf.function(decode_image, input_signature=[tf.TensorSpec([], tf.string)])
    runs = [lambda data: session.run(image, {contents: data}), decode_image, traced]
    for data in refused:
        for run in runs:
            with pytest.raises(tf.errors.InvalidArgumentError) as info:
                run(data)
            errors.append(info.value)
    session.close()
    invalid = tf.errors.InvalidArgumentError
    errors += [
        invalid(None, None, ""),
        invalid(None, None, "Invalid JPEG data\n\t [[{{node DecodeJpeg}}]]"),
        invalid(None, None, "{{function_node __inference_f_12}} bad input [Op:DecodePng] name:"),
        invalid(None, None, "Graph execution error:\n\nDetected at node decode_images/map/x\nlast"),
        ValueError("first\n\nsecond  "),
    ]
    return errors


def test_refused_input_reads_as_the_exporter_words_it(tf_errors):
    served = [input_refused_reason(exc) for exc in tf_errors]
    assert served == [error_reason(exc) for exc in tf_errors]
    assert (
        "image is 100000x100000 = 10000000000 pixels, over the limit of 40000000 (max_pixels)"
        in served
    )
    assert any(reason.startswith("not a decodable image: Invalid PNG") for reason in served)
    assert "not a decodable image: InvalidArgumentError" in served
    assert all("\n" not in reason and "{{" not in reason for reason in served)
    for exc in tf_errors[:-1]:
        assert from_tf_error(exc).code == grpc.StatusCode.INVALID_ARGUMENT
        assert from_tf_error(exc).message == error_reason(exc)


def test_a_model_error_is_not_called_an_undecodable_image():
    """INVALID_ARGUMENT from the model itself (here a reshape that cannot fit the input) says
    what failed and where, not "not a decodable image"."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def model(x):
        return tf.reshape(x, [-1, 3])

    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        model(tf.zeros([4]))
    reason = input_refused_reason(info.value)
    assert reason.startswith("the model failed on this input: ")
    assert "Reshape" in reason and "decodable" not in reason and "\n" not in reason
    assert from_tf_error(info.value).code == grpc.StatusCode.INVALID_ARGUMENT
