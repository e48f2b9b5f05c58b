"""serving_pixels as `xfer-score --preprocess client` uses it, over gRPC and REST: the model's input
size from GetModelMetadata, uint8 pixels made by the contract's own pixel step in the resize mode
the model's `preprocessing` output names, and the same scores as serving_default on the bytes.
Skips a model exported before preprocessing version 3 (no serving_pixels) on an external server."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from contract_support import TIMEOUT, http, metadata_request, predict_request
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from export.contract import (
    OUTPUTS,
    PIXELS_INPUT_KEY,
    PREPROCESSING_OUTPUT,
    SERVING_PIXELS,
)
from export.model.pixels import EagerPixels, contract_resize


@pytest.fixture(scope="module")
def pixel_size(target, stub) -> int:
    response = stub.GetModelMetadata(metadata_request(target), timeout=TIMEOUT)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    signature = signature_map.signature_def.get(SERVING_PIXELS)
    target.require(signature is not None, f"the model has no {SERVING_PIXELS} signature")
    info = signature.inputs[PIXELS_INPUT_KEY]
    assert info.dtype == tf.uint8.as_datatype_enum
    dims = [d.size for d in info.tensor_shape.dim]
    assert dims[0] == -1 and dims[3] == 3 and dims[1] == dims[2] > 0
    assert set(signature.outputs) == set(OUTPUTS[SERVING_PIXELS])
    return dims[1]


def pixels_request(target, pixels: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = target.model
    request.model_spec.signature_name = SERVING_PIXELS
    request.inputs[PIXELS_INPUT_KEY].CopyFrom(tf.make_tensor_proto(pixels))
    return request


@pytest.fixture(scope="module")
def pixel_step(target, stub, pixel_size) -> EagerPixels:
    """The contract's pixel step in the model's resize mode, learnt from `preprocessing` as
    `xfer-score --preprocess client` learns it: one probe of a black image."""
    black = np.zeros((1, pixel_size, pixel_size, 3), np.uint8)
    probe = stub.Predict(pixels_request(target, black), timeout=TIMEOUT)
    [text] = tf.make_ndarray(probe.outputs[PREPROCESSING_OUTPUT])
    contract = json.loads(text)
    return EagerPixels(pixel_size, contract["max_pixels"], contract_resize(contract))


def test_pixels_over_grpc_score_as_the_bytes_do(target, stub, pixel_size, pixel_step):
    images = [s.data for s in target.samples]
    pixels = np.stack([pixel_step(i)[0] for i in images])
    by_bytes = stub.Predict(predict_request(target, images), timeout=TIMEOUT)
    by_pixels = stub.Predict(pixels_request(target, pixels), timeout=TIMEOUT)
    assert by_pixels.model_spec.version.value == by_bytes.model_spec.version.value
    np.testing.assert_allclose(
        tf.make_ndarray(by_pixels.outputs["scores"]),
        tf.make_ndarray(by_bytes.outputs["scores"]),
        atol=1e-5,
    )
    for text in tf.make_ndarray(by_pixels.outputs[PREPROCESSING_OUTPUT]):
        contract = json.loads(text)
        assert contract_resize(contract).version == contract["version"]  # one we can make
        assert contract["image_size"] == pixel_size and contract["max_pixels"] > 0


def test_pixels_over_rest_as_integers(target, rest, pixel_size, pixel_step):
    sample = target.samples[0]
    pixels = pixel_step(sample.data)[0]
    status, body = http("POST", f"{rest}:predict", {"instances": [{"b64": sample.b64}]})
    assert status == 200, body
    status, pixel_body = http(
        "POST",
        f"{rest}:predict",
        {"signature_name": SERVING_PIXELS, "instances": [pixels.tolist()]},
    )
    assert status == 200, pixel_body
    [row] = pixel_body["predictions"]
    np.testing.assert_allclose(row["scores"], body["predictions"][0]["scores"], atol=1e-5)
    assert json.loads(row[PREPROCESSING_OUTPUT])["image_size"] == pixel_size
