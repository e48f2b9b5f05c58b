"""TF Serving's REST API as a client uses it: status, metadata, :predict (b64), :classify, routes.

REST :predict / :classify responses carry no model_spec; the version a route resolves to is
checked through the metadata routes, which do report it.
"""

from __future__ import annotations

from contract_support import http

from export.contract import (
    CLASSIFICATION,
    EMBEDDING,
    INPUT_KEY,
    INPUTS,
    METHODS,
    OUTPUTS,
    SERVING_DEFAULT,
)

DTYPE_JSON = {"float32": "DT_FLOAT", "int32": "DT_INT32", "string": "DT_STRING", "bool": "DT_BOOL"}


def check_rows(rows: list, n: int, label_list: list[str]) -> None:
    """`predictions` of a row-format request: one object per instance, one key per output."""
    assert isinstance(rows, list) and len(rows) == n
    for row in rows:
        assert set(row) == set(OUTPUTS[SERVING_DEFAULT])
        assert len(row["scores"]) == len(label_list)
        assert abs(sum(row["scores"]) - 1.0) < 1e-4
        k = len(row["labels"])
        assert 1 <= k <= len(label_list)
        assert len(row["classes"]) == len(row["top_scores"]) == k
        assert all(isinstance(c, int) for c in row["classes"])
        assert row["labels"] == [label_list[i] for i in row["classes"]]  # plain strings


def test_status(target, rest, versions):
    status, body = http("GET", rest)
    assert status == 200, body
    entries = body["model_version_status"]
    available = {int(e["version"]) for e in entries if e["state"] == "AVAILABLE"}
    assert sorted(available) == versions
    for entry in entries:
        assert isinstance(entry["version"], str)  # int64 is a JSON string
        if entry["state"] == "AVAILABLE":
            assert entry["status"] == {"error_code": "OK", "error_message": ""}

    status, body = http("GET", f"{rest}/versions/{versions[0]}")
    assert status == 200, body
    (entry,) = body["model_version_status"]
    assert entry["version"] == str(versions[0]) and entry["state"] == "AVAILABLE"


def test_metadata(target, rest, latest):
    status, body = http("GET", f"{rest}/metadata")
    assert status == 200, body
    assert body["model_spec"]["name"] == target.model
    assert body["model_spec"]["version"] == str(latest)
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {SERVING_DEFAULT, CLASSIFICATION, EMBEDDING} <= set(signatures)
    for name in (SERVING_DEFAULT, CLASSIFICATION, EMBEDDING):
        signature = signatures[name]
        assert signature["method_name"] == METHODS[name]
        assert set(signature["inputs"]) == {INPUTS[name]}
        assert signature["inputs"][INPUTS[name]]["dtype"] == "DT_STRING"
        assert {o: v["dtype"] for o, v in signature["outputs"].items()} == {
            o: DTYPE_JSON[dtype] for o, (dtype, _) in OUTPUTS[name].items()
        }


def test_metadata_version_and_label_routes(target, rest, versions, version_labels):
    """Needs version labels (skips otherwise for an external target)."""
    for version in versions:
        status, body = http("GET", f"{rest}/versions/{version}/metadata")
        assert status == 200, body
        assert body["model_spec"]["version"] == str(version)
    for label, version in version_labels.items():
        status, body = http("GET", f"{rest}/labels/{label}/metadata")
        assert status == 200, body
        assert body["model_spec"]["version"] == str(version), label


def test_predict_instances_b64(target, rest, label_list):
    samples = target.samples
    status, body = http("POST", f"{rest}:predict", {"instances": [{"b64": s.b64} for s in samples]})
    assert status == 200, body
    assert set(body) == {"predictions"}
    check_rows(body["predictions"], len(samples), label_list)


def test_predict_instances_named_input_objects(target, rest, label_list):
    """Row format with the input named: [{"image_bytes": {"b64": ...}}, ...]."""
    sample = target.sample()
    payload = {"signature_name": SERVING_DEFAULT, "instances": [{INPUT_KEY: {"b64": sample.b64}}]}
    status, body = http("POST", f"{rest}:predict", payload)
    assert status == 200, body
    check_rows(body["predictions"], 1, label_list)


def test_predict_inputs_columnar(target, rest, label_list):
    samples = [target.sample("jpeg"), target.sample("png")]
    payload = {"inputs": {INPUT_KEY: [{"b64": s.b64} for s in samples]}}
    status, body = http("POST", f"{rest}:predict", payload)
    assert status == 200, body
    assert set(body) == {"outputs"}
    outputs = body["outputs"]
    assert set(outputs) == set(OUTPUTS[SERVING_DEFAULT])
    rows = [{name: column[i] for name, column in outputs.items()} for i in range(len(samples))]
    check_rows(rows, len(samples), label_list)


def test_predict_embedding_signature(target, rest):
    payload = {"signature_name": EMBEDDING, "instances": [{"b64": target.sample().b64}]}
    status, body = http("POST", f"{rest}:predict", payload)
    assert status == 200, body
    (row,) = body["predictions"]
    # a single output: each prediction is the value itself, not an object
    assert isinstance(row, list) and row and all(isinstance(v, float) for v in row)


def test_predict_version_route(target, rest, versions, label_list):
    for version in versions:
        payload = {"inputs": {INPUT_KEY: [{"b64": target.sample().b64}]}}
        status, body = http("POST", f"{rest}/versions/{version}:predict", payload)
        assert status == 200, body
        assert len(body["outputs"]["scores"][0]) == len(label_list)


def test_predict_and_classify_label_routes(target, rest, version_labels, label_list):
    """Needs version labels (skips otherwise for an external target)."""
    for label in version_labels:
        payload = {"instances": [{"b64": target.sample().b64}]}
        status, body = http("POST", f"{rest}/labels/{label}:predict", payload)
        assert status == 200, body
        check_rows(body["predictions"], 1, label_list)
        payload = {
            "signature_name": CLASSIFICATION,
            "examples": [{"image/encoded": {"b64": target.sample().b64}}],
        }
        status, body = http("POST", f"{rest}/labels/{label}:classify", payload)
        assert status == 200, body


def test_classify(target, rest, label_list):
    samples = [target.sample("jpeg"), target.sample("png")]
    payload = {
        "signature_name": CLASSIFICATION,
        "examples": [{"image/encoded": {"b64": s.b64}} for s in samples],
    }
    status, body = http("POST", f"{rest}:classify", payload)
    assert status == 200, body
    assert set(body) == {"results"}
    assert len(body["results"]) == len(samples)
    for result in body["results"]:
        assert [pair[0] for pair in result] == label_list  # [[label, score], ...]
        assert abs(sum(pair[1] for pair in result) - 1.0) < 1e-4


def test_classify_version_route(target, rest, versions):
    payload = {
        "signature_name": CLASSIFICATION,
        "examples": [{"image/encoded": {"b64": target.sample().b64}}],
    }
    status, body = http("POST", f"{rest}/versions/{versions[0]}:classify", payload)
    assert status == 200, body
    assert len(body["results"]) == 1
