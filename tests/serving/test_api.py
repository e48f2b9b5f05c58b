"""The TF Serving API as a client uses it, over gRPC and REST, against the in-process server."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    regression_pb2,
)
from testconfig import MODEL


def predict_request(images, version=None, label=None, signature=""):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_predict_raw_bytes_grpc(stub, images):
    response = stub.Predict(predict_request([images["red"], images["blue"]]), timeout=30)
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 2  # latest of the served versions
    assert response.model_spec.signature_name == "serving_default"
    labels = tf.make_ndarray(response.outputs["labels"])
    scores = tf.make_ndarray(response.outputs["scores"])
    assert labels.shape == (2, 3) and scores.shape == (2, 3)
    assert [row[0] for row in labels] == [b"red", b"blue"]
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    # TF Serving writes outputs as typed fields (AsProtoField), not tensor_content
    assert response.outputs["scores"].float_val and not response.outputs["scores"].tensor_content


def test_versions_and_labels_grpc(stub, images):
    for spec, expected in (({"version": 1}, 1), ({"label": "stable"}, 1), ({"label": "canary"}, 2)):
        response = stub.Predict(predict_request([images["green"]], **spec), timeout=30)
        assert response.model_spec.version.value == expected


def test_classify_with_tf_example(stub, images):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "classification"
    for colour in ("red", "green"):
        example = request.input.example_list.examples.add()
        example.features.feature["image/encoded"].bytes_list.value.append(images[colour])
    response = stub.Classify(request, timeout=30)
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "classification"
    for classification, colour in zip(response.result.classifications, ("red", "green")):
        best = max(classification.classes, key=lambda c: c.score)
        assert best.label == colour
        assert sorted(c.label for c in classification.classes) == ["blue", "green", "red"]


def test_metadata_grpc(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = stub.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 2
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    default = signature_map.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert set(default.outputs) == {
        "scores",
        "classes",
        "labels",
        "top_scores",
        "ood_score",
        "is_ood",
    }
    assert (
        signature_map.signature_def["classification"].method_name == "tensorflow/serving/classify"
    )


def test_status_grpc(model_stub):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    response = model_stub.GetModelStatus(request, timeout=30)
    states = {s.version: s.state for s in response.model_version_status}
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert states == {1: available, 2: available}


@pytest.mark.parametrize(
    "mutate, code, fragment",
    [
        (
            lambda r: setattr(r.model_spec, "name", "nope"),
            grpc.StatusCode.NOT_FOUND,
            "Latest(nope)",
        ),
        (lambda r: r.model_spec.version.__setattr__("value", 9), grpc.StatusCode.NOT_FOUND, "9"),
        # TF Serving answers an unknown label with INVALID_ARGUMENT (server_core.cc)
        (
            lambda r: setattr(r.model_spec, "version_label", "nightly"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: nightly",
        ),
        (
            lambda r: r.inputs["pixels"].CopyFrom(r.inputs.pop("image_bytes")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "pixels",
        ),
        (
            lambda r: r.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([1.0, 2.0])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "image_bytes",
        ),
        # a shape the signature does not declare: TF Serving leaves it to the graph, which fails
        (
            lambda r: r.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([[b"a"], [b"b"]])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Incompatible shapes",
        ),
        (
            lambda r: setattr(r.model_spec, "signature_name", "nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
    ],
    ids=["model", "version", "label", "input-name", "dtype", "shape", "signature"],
)
def test_grpc_errors(stub, images, mutate, code, fragment):
    request = predict_request([images["red"]])
    mutate(request)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    assert info.value.code() == code
    assert fragment in info.value.details()


def test_bad_image_is_invalid_argument_and_server_keeps_serving(stub, images):
    for payload in (b"not an image at all", images["red"][:100]):
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(predict_request([payload]), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a decodable image" in info.value.details()
        assert "\n" not in info.value.details()
    assert stub.Predict(predict_request([images["red"]]), timeout=30).model_spec.version.value == 2


def test_an_empty_batch_is_answered_with_empty_outputs(stub):
    """Zero images is a request with nothing to do, not "not a decodable image: Incompatible
    shapes" (a zero-size batch used to reach a convolution kernel that refuses it)."""
    for signature, output, width in (("", "scores", 3), ("embedding", "features", None)):
        response = stub.Predict(predict_request([], signature=signature), timeout=30)
        array = tf.make_ndarray(response.outputs[output])
        assert array.shape[0] == 0 and (width is None or array.shape == (0, width))
    labels = stub.Predict(predict_request([]), timeout=30).outputs["labels"]
    assert tf.make_ndarray(labels).shape == (0, 3)


def test_oversized_image_is_refused_from_its_header_and_server_keeps_serving(stub, images):
    png = images["green"]
    # A real PNG whose header claims 100000 x 100000 pixels: refused before any decoding.
    bomb = png[:16] + (100_000).to_bytes(4, "big") * 2 + png[24:]
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(predict_request([bomb]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image is 100000x100000 = 10000000000 pixels, over the limit" in info.value.details()
    assert stub.Predict(predict_request([images["red"]]), timeout=30).model_spec.version.value == 2


def test_regress_answers_as_tf_serving_for_a_model_without_regression(stub, images):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL
    request.input.example_list.examples.add()
    with pytest.raises(grpc.RpcError) as info:
        stub.Regress(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Expected one output Tensor."


def test_health(channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", MODEL):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------- REST


def test_rest_predict_instances_b64(rest_url, b64):
    status, body = http(
        "POST",
        f"{rest_url}/v1/models/{MODEL}:predict",
        {"instances": [{"b64": b64["red"]}, {"b64": b64["blue"]}]},
    )
    assert status == 200, body
    rows = body["predictions"]
    assert [row["labels"][0] for row in rows] == ["red", "blue"]
    assert set(rows[0]) == {"scores", "classes", "labels", "top_scores", "ood_score", "is_ood"}


def test_rest_predict_inputs_columnar_with_version_and_label(rest_url, b64):
    for route in ("/versions/1", "/labels/canary", ""):
        status, body = http(
            "POST",
            f"{rest_url}/v1/models/{MODEL}{route}:predict",
            {
                "signature_name": "serving_default",
                "inputs": {"image_bytes": [{"b64": b64["green"]}]},
            },
        )
        assert status == 200, body
        assert body["outputs"]["labels"][0][0] == "green"


def test_rest_classify(rest_url, b64):
    status, body = http(
        "POST",
        f"{rest_url}/v1/models/{MODEL}:classify",
        {"signature_name": "classification", "examples": [{"image/encoded": {"b64": b64["blue"]}}]},
    )
    assert status == 200, body
    (row,) = body["results"]
    assert max(row, key=lambda pair: pair[1])[0] == "blue"


def test_rest_status_and_metadata(rest_url):
    status, body = http("GET", f"{rest_url}/v1/models/{MODEL}")
    assert status == 200
    assert {v["version"]: v["state"] for v in body["model_version_status"]} == {
        "1": "AVAILABLE",
        "2": "AVAILABLE",
    }
    assert body["model_version_status"][0]["status"] == {"error_code": "OK", "error_message": ""}
    status, body = http("GET", f"{rest_url}/v1/models/{MODEL}/versions/1/metadata")
    assert status == 200
    assert body["model_spec"]["version"] == "1"
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["image_bytes"]["dtype"] == "DT_STRING"


@pytest.mark.parametrize(
    "method, path, payload, code, fragment",
    [
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        ("POST", "/v1/models/nope:predict", {"instances": [1]}, 404, "Servable not found"),
        ("GET", "/v1/models/shapes/versions/7", None, 404, "Could not find version 7"),
        ("POST", "/v1/models/shapes:predict", {"instances": ["x"]}, 400, "not a decodable image"),
        ("POST", "/v1/models/shapes:predict", {"instances": [1.5]}, 400, "expected type: string"),
        ("POST", "/v1/models/shapes:predict", {"nothing": 1}, 400, "Missing 'inputs' or"),
        ("POST", "/v1/models/shapes:explain", {"instances": [1]}, 400, "Malformed request"),
    ],
)
def test_rest_errors(rest_url, method, path, payload, code, fragment):
    status, body = http(method, rest_url + path, payload)
    assert status == code
    assert set(body) == {"error"} and fragment in body["error"]


def batching_metrics(rest_url) -> dict[str, float]:
    """The batching series of the metrics page, summed over their labels."""
    text = urllib.request.urlopen(f"{rest_url}/monitoring/prometheus/metrics").read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith((":tensorflow:serving:batching_session:", ":xfer:serving:batching")):
            name = line.split("{")[0].split()[0].rsplit(":", 1)[-1]
            values[name] = values.get(name, 0) + float(line.split()[-1])
    return values


def concurrent_predicts(stub, image: bytes, n: int) -> None:
    errors, barrier = [], threading.Barrier(n)

    def one():
        try:
            barrier.wait()
            stub.Predict(predict_request([image]), timeout=30)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_batching_merges_concurrent_requests(stub, images, rest_url):
    def batch_count_and_sum():
        values = batching_metrics(rest_url)
        return values["processed_batch_size_count"], values["processed_batch_size_sum"]

    count0, sum0 = batch_count_and_sum()
    concurrent_predicts(stub, images["red"], 8)
    count, total = batch_count_and_sum()
    batches, rows = count - count0, total - sum0
    assert rows >= 8  # 8 single-image requests (plus padding to 2, 4 or 8)
    assert batches < 8, f"8 concurrent requests ran in {batches} model calls: nothing merged"
    metrics = urllib.request.urlopen(f"{rest_url}/monitoring/prometheus/metrics").read().decode()
    assert ':tensorflow:serving:request_count_total{model_name="shapes",status="OK"}' in metrics


def test_padding_to_allowed_sizes_is_counted_and_its_fraction_exported(stub, images, rest_url):
    before = batching_metrics(rest_url)
    concurrent_predicts(stub, images["green"], 3)  # however split, 3 rows pad to 2s, 4s or 8s
    after = batching_metrics(rest_url)
    rows = after["processed_batch_size_sum"] - before["processed_batch_size_sum"]
    padding = after["padding_size_sum"] - before["padding_size_sum"]
    assert rows in (4, 6) and padding == rows - 3  # {3} -> 4; {2, 1} -> 2 + 2; {1, 1, 1} -> 6
    # The gauge: padded rows / processed rows over every batch since the server started.
    assert after["padding_fraction"] == pytest.approx(
        after["padding_size_sum"] / after["processed_batch_size_sum"]
    )
    assert after["padding_fraction"] > 0


def test_reload_config_moves_a_label_and_refuses_an_unavailable_version(
    server, model_stub, stub, images, served_base
):
    from tensorflow_serving.apis import model_management_pb2

    def reload(labels):
        request = model_management_pb2.ReloadConfigRequest()
        config = request.config.model_config_list.config.add(
            name=MODEL, base_path=str(served_base), model_platform="tensorflow"
        )
        config.model_version_policy.specific.versions.extend([1, 2])
        for key, value in labels.items():
            config.version_labels[key] = value
        return model_stub.HandleReloadConfigRequest(request, timeout=60)

    try:
        reload({"stable": 2, "canary": 2})
        request = predict_request([images["red"]], label="stable")
        assert stub.Predict(request, timeout=30).model_spec.version.value == 2
        with pytest.raises(grpc.RpcError) as info:
            reload({"stable": 5})
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "version 5 of model shapes, which is not currently available" in (
            info.value.details()
        )
    finally:
        reload({"stable": 1, "canary": 2})
    assert stub.Predict(request, timeout=30).model_spec.version.value == 1
