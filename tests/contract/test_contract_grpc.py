"""TF Serving's gRPC API as the client uses it: Predict (raw bytes), Classify, metadata, status.

Every response that carries a model_spec is checked for the version that served it.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from contract_support import (
    TIMEOUT,
    UNKNOWN_MODEL,
    UNKNOWN_VERSION,
    classify_request,
    metadata_request,
    predict_request,
    rpc_error,
)
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from export.contract import (
    CLASSIFICATION,
    EMBEDDING,
    INPUTS,
    METHODS,
    OUTPUTS,
    SERVING_DEFAULT,
)

DTYPES = {"float32": tf.float32, "int32": tf.int32, "string": tf.string, "bool": tf.bool}


def outputs_of(response) -> dict[str, np.ndarray]:
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def check_predict_outputs(response, n: int, label_list: list[str]) -> dict[str, np.ndarray]:
    """serving_default outputs as export/contract.py defines them, consistent with each other."""
    contract = OUTPUTS[SERVING_DEFAULT]
    assert set(response.outputs) == set(contract)
    for name, (dtype, _) in contract.items():
        assert response.outputs[name].dtype == DTYPES[dtype].as_datatype_enum, name
    out = outputs_of(response)
    c = len(label_list)
    assert out["scores"].shape == (n, c)
    k = out["classes"].shape[1]
    assert 1 <= k <= c
    for name in ("classes", "labels", "top_scores"):
        assert out[name].shape == (n, k), name
    np.testing.assert_allclose(out["scores"].sum(axis=1), 1.0, rtol=1e-4)
    for row in range(n):
        labels = [v.decode("utf-8") for v in out["labels"][row]]
        assert set(labels) <= set(label_list)
        # labels[j] is the name of class index classes[j], whose score is top_scores[j]
        assert labels == [label_list[i] for i in out["classes"][row]]
        np.testing.assert_allclose(
            out["top_scores"][row], out["scores"][row][out["classes"][row]], rtol=1e-5
        )
        assert list(out["top_scores"][row]) == sorted(out["top_scores"][row], reverse=True)
    return out


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_predict_raw_image_bytes(target, stub, latest, label_list, kind):
    sample = target.sample(kind)
    response = stub.Predict(predict_request(target, [sample.data]), timeout=TIMEOUT)
    assert response.model_spec.name == target.model
    assert response.model_spec.version.value == latest
    assert response.model_spec.signature_name == SERVING_DEFAULT
    check_predict_outputs(response, 1, label_list)


def test_predict_batch_of_all_samples_named_signature(target, stub, latest, label_list):
    images = [s.data for s in target.samples]
    request = predict_request(target, images, signature=SERVING_DEFAULT)
    response = stub.Predict(request, timeout=TIMEOUT)
    assert response.model_spec.version.value == latest
    check_predict_outputs(response, len(images), label_list)


def test_predict_output_filter(target, stub, latest):
    request = predict_request(target, [target.sample().data])
    request.output_filter.append("labels")
    response = stub.Predict(request, timeout=TIMEOUT)
    assert response.model_spec.version.value == latest
    assert set(response.outputs) == {"labels"}


def test_predict_embedding_signature(target, stub, latest):
    images = [s.data for s in target.samples[:2]]
    response = stub.Predict(predict_request(target, images, signature=EMBEDDING), timeout=TIMEOUT)
    assert response.model_spec.version.value == latest
    assert response.model_spec.signature_name == EMBEDDING
    assert set(response.outputs) == set(OUTPUTS[EMBEDDING])
    features = tf.make_ndarray(response.outputs["features"])
    assert features.dtype == np.float32
    assert features.ndim == 2 and features.shape[0] == len(images) and features.shape[1] > 0


def test_predict_by_version(target, stub, two_versions):
    """Needs two served versions (skips otherwise for an external target)."""
    for version in two_versions:
        request = predict_request(target, [target.sample().data], version=version)
        assert stub.Predict(request, timeout=TIMEOUT).model_spec.version.value == version
        request = classify_request(target, [target.sample().data], version=version)
        assert stub.Classify(request, timeout=TIMEOUT).model_spec.version.value == version


def test_predict_by_version_label(target, stub, version_labels):
    """Needs version labels (skips otherwise for an external target)."""
    for label, version in version_labels.items():
        request = predict_request(target, [target.sample().data], label=label)
        response = stub.Predict(request, timeout=TIMEOUT)
        assert response.model_spec.version.value == version, label
        request = classify_request(target, [target.sample().data], label=label)
        assert stub.Classify(request, timeout=TIMEOUT).model_spec.version.value == version


def test_classify_with_tf_example(target, stub, latest, label_list):
    samples = [target.sample("jpeg"), target.sample("png")]
    response = stub.Classify(classify_request(target, [s.data for s in samples]), timeout=TIMEOUT)
    assert response.model_spec.name == target.model
    assert response.model_spec.version.value == latest
    assert response.model_spec.signature_name == CLASSIFICATION
    classifications = response.result.classifications
    assert len(classifications) == len(samples)
    predicted = outputs_of(
        stub.Predict(predict_request(target, [s.data for s in samples]), timeout=TIMEOUT)
    )
    for row, classification in enumerate(classifications):
        labels = [c.label for c in classification.classes]
        assert labels == label_list  # every class, in class-index order
        scores = [c.score for c in classification.classes]
        assert sum(scores) == pytest.approx(1.0, rel=1e-4)
        # same classifier behind both signatures: Classify's scores are Predict's scores
        np.testing.assert_allclose(scores, predicted["scores"][row], rtol=1e-4, atol=1e-6)


def test_get_model_metadata(target, stub, latest):
    response = stub.GetModelMetadata(metadata_request(target), timeout=TIMEOUT)
    assert response.model_spec.name == target.model
    assert response.model_spec.version.value == latest
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    signatures = signature_map.signature_def
    assert {SERVING_DEFAULT, CLASSIFICATION, EMBEDDING} <= set(signatures)
    for name in (SERVING_DEFAULT, CLASSIFICATION, EMBEDDING):
        signature = signatures[name]
        assert signature.method_name == METHODS[name], name
        assert set(signature.inputs) == {INPUTS[name]}, name
        assert signature.inputs[INPUTS[name]].dtype == tf.string.as_datatype_enum, name
        assert set(signature.outputs) == set(OUTPUTS[name]), name
        for output, (dtype, width) in OUTPUTS[name].items():
            info = signature.outputs[output]
            assert info.dtype == DTYPES[dtype].as_datatype_enum, (name, output)
            assert len(info.tensor_shape.dim) == (1 if width is None else 2), (name, output)


def test_get_model_metadata_by_version_and_label(target, stub, versions, version_labels):
    """Needs version labels (skips otherwise for an external target)."""
    for version in versions:
        response = stub.GetModelMetadata(metadata_request(target, version=version), timeout=30)
        assert response.model_spec.version.value == version
    for label, version in version_labels.items():
        response = stub.GetModelMetadata(metadata_request(target, label=label), timeout=30)
        assert response.model_spec.version.value == version, label


def test_get_model_metadata_field_rules(target, stub):
    request = metadata_request(target)
    del request.metadata_field[:]
    error = rpc_error(stub.GetModelMetadata, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must specify at least one metadata_field" in error.details()
    request.metadata_field.append("bogus_field")
    error = rpc_error(stub.GetModelMetadata, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bogus_field is not supported" in error.details()


def test_get_model_status(target, model_stub, versions):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = target.model
    response = model_stub.GetModelStatus(request, timeout=TIMEOUT)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    by_version = {s.version: s for s in response.model_version_status}
    assert sorted(v for v, s in by_version.items() if s.state == available) == versions
    if target.managed:
        assert versions == [1, 2]
        assert len(response.model_version_status) == 2
    for version in versions:
        status = by_version[version].status
        assert status.error_code == 0 and status.error_message == ""  # error.Code OK

    request.model_spec.version.value = versions[0]
    response = model_stub.GetModelStatus(request, timeout=TIMEOUT)
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (versions[0], available)
    ]


def test_get_model_status_not_found(target, model_stub):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = target.model
    request.model_spec.version.value = UNKNOWN_VERSION
    error = rpc_error(model_stub.GetModelStatus, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert f"Could not find version {UNKNOWN_VERSION} of model {target.model}" in error.details()

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = UNKNOWN_MODEL
    error = rpc_error(model_stub.GetModelStatus, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert f"Could not find any versions of model {UNKNOWN_MODEL}" in error.details()
