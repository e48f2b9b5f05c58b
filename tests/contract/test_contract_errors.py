"""Error codes as TensorFlow Serving returns them, over gRPC and REST.

Messages are checked only for substrings TF Serving's own code writes and has kept stable
(server_core.cc, basic_manager.cc, predict_util.cc, get_model_status_impl.cc, json_tensor.cc,
http_rest_api_util.cc, tensorflow/cc/saved_model/util.cc, framework/function.cc), plus the
model's own assertion text for an image it cannot decode.
"""

from __future__ import annotations

import base64

import grpc
import pytest
from contract_support import (
    TIMEOUT,
    UNKNOWN_LABEL,
    UNKNOWN_MODEL,
    UNKNOWN_VERSION,
    classify_request,
    http,
    metadata_request,
    predict_request,
    rpc_error,
)

from export.contract import CLASSIFICATION, INPUT_KEY

NOT_AN_IMAGE = b"this is not an image at all"


def float_tensor():
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)]
        ),
        float_val=[1.0, 2.0],
    )


# ---------------------------------------------------------------- gRPC: model spec


def test_unknown_model_is_not_found(target, stub):
    for call, request in (
        (stub.Predict, predict_request(target, [target.sample().data])),
        (stub.Classify, classify_request(target, [target.sample().data])),
        (stub.GetModelMetadata, metadata_request(target)),
    ):
        request.model_spec.name = UNKNOWN_MODEL
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert f"Servable not found for request: Latest({UNKNOWN_MODEL})" in error.details()


def test_unknown_version_is_not_found(target, stub):
    request = predict_request(target, [target.sample().data], version=UNKNOWN_VERSION)
    error = rpc_error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert f"Specific({target.model}, {UNKNOWN_VERSION})" in error.details()
    error = rpc_error(stub.GetModelMetadata, metadata_request(target, version=UNKNOWN_VERSION))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_unknown_version_label_is_invalid_argument(target, stub):
    """server_core.cc GetModelVersionForLabel: INVALID_ARGUMENT, not NOT_FOUND."""
    for call, request in (
        (stub.Predict, predict_request(target, [target.sample().data], label=UNKNOWN_LABEL)),
        (stub.Classify, classify_request(target, [target.sample().data], label=UNKNOWN_LABEL)),
        (stub.GetModelMetadata, metadata_request(target, label=UNKNOWN_LABEL)),
    ):
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"Unrecognized servable version label: {UNKNOWN_LABEL}" in error.details()


def test_unknown_signature_is_failed_precondition(target, stub):
    request = predict_request(target, [target.sample().data], signature="no_such_signature")
    error = rpc_error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'Serving signature key "no_such_signature" not found.' in error.details()


# ---------------------------------------------------------------- gRPC: inputs


def test_wrong_input_name_is_invalid_argument_naming_it(target, stub):
    request = predict_request(target, [target.sample().data], input_key="pixels")
    error = rpc_error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input tensor alias not found in signature: pixels" in error.details()


def test_missing_input_is_invalid_argument(target, stub):
    request = predict_request(target, [target.sample().data])
    del request.inputs[INPUT_KEY]
    error = rpc_error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input size does not match signature: 0!=1" in error.details()
    assert INPUT_KEY in error.details()


def test_wrong_input_dtype_is_invalid_argument(target, stub):
    request = predict_request(target, [target.sample().data])
    request.inputs[INPUT_KEY].CopyFrom(float_tensor())
    error = rpc_error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # TF's FunctionCallFrame: "Expects arg[0] to be string but float is provided"
    assert "Expects arg[" in error.details() and "is provided" in error.details()


@pytest.mark.parametrize("payload", ["garbage", "truncated-jpeg"])
def test_undecodable_image_is_invalid_argument_and_server_keeps_serving(
    target, stub, latest, payload
):
    data = NOT_AN_IMAGE if payload == "garbage" else target.sample("jpeg").data[:100]
    error = rpc_error(stub.Predict, predict_request(target, [data]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    if payload == "garbage":  # the model's own tf.debugging.Assert text
        assert "not a decodable image" in error.details()
    error = rpc_error(stub.Classify, classify_request(target, [data]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # the same server still answers good requests
    response = stub.Predict(predict_request(target, [target.sample().data]), timeout=TIMEOUT)
    assert response.model_spec.version.value == latest


# ---------------------------------------------------------------- REST


def check_error(status: int, body: dict, code: int, fragment: str) -> None:
    assert status == code, body
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert fragment in body["error"], body


def test_rest_unknown_model_is_404(target):
    if not target.rest_url:
        pytest.skip("no REST target (--rest-target / XFER_CONTRACT_REST)")
    base = f"{target.rest_url}/v1/models/{UNKNOWN_MODEL}"
    status, body = http("GET", base)
    check_error(status, body, 404, f"Could not find any versions of model {UNKNOWN_MODEL}")
    status, body = http("GET", f"{base}/metadata")
    check_error(status, body, 404, f"Servable not found for request: Latest({UNKNOWN_MODEL})")
    status, body = http("POST", f"{base}:predict", {"instances": [{"b64": target.sample().b64}]})
    check_error(status, body, 404, f"Servable not found for request: Latest({UNKNOWN_MODEL})")


def test_rest_unknown_version_is_404(target, rest):
    status, body = http("GET", f"{rest}/versions/{UNKNOWN_VERSION}")
    check_error(status, body, 404, f"Could not find version {UNKNOWN_VERSION}")
    status, body = http("GET", f"{rest}/versions/{UNKNOWN_VERSION}/metadata")
    check_error(status, body, 404, f"Specific({target.model}, {UNKNOWN_VERSION})")
    payload = {"instances": [{"b64": target.sample().b64}]}
    status, body = http("POST", f"{rest}/versions/{UNKNOWN_VERSION}:predict", payload)
    check_error(status, body, 404, f"Specific({target.model}, {UNKNOWN_VERSION})")


def test_rest_unknown_label_is_400(target, rest):
    fragment = f"Unrecognized servable version label: {UNKNOWN_LABEL}"
    status, body = http("GET", f"{rest}/labels/{UNKNOWN_LABEL}/metadata")
    check_error(status, body, 400, fragment)
    payload = {"instances": [{"b64": target.sample().b64}]}
    status, body = http("POST", f"{rest}/labels/{UNKNOWN_LABEL}:predict", payload)
    check_error(status, body, 400, fragment)
    payload = {
        "signature_name": CLASSIFICATION,
        "examples": [{"image/encoded": {"b64": target.sample().b64}}],
    }
    status, body = http("POST", f"{rest}/labels/{UNKNOWN_LABEL}:classify", payload)
    check_error(status, body, 400, fragment)


def test_rest_wrong_input_name_is_400_naming_it(target, rest):
    b64 = target.sample().b64
    status, body = http("POST", f"{rest}:predict", {"instances": [{"pixels": {"b64": b64}}]})
    check_error(status, body, 400, "does not have named input: pixels")
    status, body = http("POST", f"{rest}:predict", {"inputs": {"pixels": [{"b64": b64}]}})
    check_error(status, body, 400, f"Missing named input: {INPUT_KEY} in 'inputs' object.")


def test_rest_wrong_value_type_is_400(target, rest):
    status, body = http("POST", f"{rest}:predict", {"instances": [1.5]})
    check_error(status, body, 400, "is not of expected type")


def test_rest_bad_base64_is_400(target, rest):
    status, body = http("POST", f"{rest}:predict", {"instances": [{"b64": "@@@@"}]})
    check_error(status, body, 400, "Unable to base64 decode")


def test_rest_undecodable_image_is_400_and_server_keeps_serving(target, rest):
    garbage = base64.b64encode(NOT_AN_IMAGE).decode()
    status, body = http("POST", f"{rest}:predict", {"instances": [{"b64": garbage}]})
    check_error(status, body, 400, "not a decodable image")
    status, body = http("POST", f"{rest}:predict", {"instances": [{"b64": target.sample().b64}]})
    assert status == 200, body


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"{not json", "JSON Parse error"),
        (b"", "JSON Parse error: The document is empty"),
        (b"[1, 2]", "Is not object"),
        (b'{"signature_name": 7, "instances": []}', "'signature_name' key must be a string"),
        (b'{"nothing": 1}', "Missing 'inputs' or 'instances' key"),
        (b'{"instances": [], "inputs": []}', "expecting only one of 'inputs' or 'instances'"),
        (b'{"instances": {}}', "Expecting 'instances' to be an list/array"),
        (b'{"instances": []}', "No values in 'instances' array"),
    ],
    ids=["syntax", "empty", "array", "signature-type", "no-key", "both-keys", "not-list", "none"],
)
def test_rest_malformed_request_json_is_400(target, rest, raw, fragment):
    status, body = http("POST", f"{rest}:predict", raw=raw)
    check_error(status, body, 400, fragment)


def test_rest_malformed_classify_json_is_400(target, rest):
    status, body = http("POST", f"{rest}:classify", {"signature_name": CLASSIFICATION})
    check_error(status, body, 400, "key 'examples' is expected and was not found")


def test_rest_unknown_verb_is_400_malformed_request(target, rest):
    status, body = http("POST", f"{rest}:explain", {"instances": [{"b64": target.sample().b64}]})
    check_error(status, body, 400, "Malformed request: POST /v1/models/")
