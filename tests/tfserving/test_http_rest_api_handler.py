"""tensorflow_serving/model_servers/http_rest_api_handler_test.cc, case by case, over HTTP.

Upstream calls HttpRestApiHandler::ProcessRequest(method, path, body) in process; here the same
(method, path, body) go to the server's REST port, and a status code stands for the absl status
(INVALID_ARGUMENT 400, NOT_FOUND 404, as http_server.cc maps them). The model is
saved_model_half_plus_two_2_versions, version 123 only, with the label Version_Label -> 123.
"""

from __future__ import annotations

import pytest
from tfs_expected import HALF_PLUS_TWO_2_VERSIONS_METADATA
from tfs_harness import http, sorted_object

MODEL = "saved_model_half_plus_two_2_versions"
VERSION = 123
LABEL = "Version_Label"
NONEXISTENT_LABEL = "Version_Nonexistent"
UINT64_MAX = 2**64 - 1


@pytest.fixture(scope="module")
def rest(launcher, testdata, tmp_path_factory) -> str:
    """SetUpTestSuite: the model with `specific { versions: 123 }`, then the label."""
    config = tmp_path_factory.mktemp("rest-handler") / "models.config"
    config.write_text(
        "model_config_list {\n  config {\n"
        f'    name: "{MODEL}"\n'
        f'    base_path: "{testdata / "saved_model_half_plus_two_2_versions"}"\n'
        '    model_platform: "tensorflow"\n'
        f"    model_version_policy {{ specific {{ versions: {VERSION} }} }}\n"
        f'    version_labels {{ key: "{LABEL}" value: {VERSION} }}\n'
        "  }\n}\n"
    )
    server = launcher.run_server([f"--model_config_file={config}"])
    return f"http://{server.rest}"


def process(rest: str, method: str, path: str, body: str = "") -> tuple[int, str, dict]:
    return http(method, rest + path, body)


def expect_error(result, status: int, fragment: str) -> None:
    code, ctype, body = result
    assert code == status, body
    assert ctype.startswith("application/json")
    assert fragment in body["error"], body


def expect_ok(result, expected: dict) -> None:
    code, ctype, body = result
    assert code == 200, body
    assert ctype == "application/json"  # headers: {"Content-Type", "application/json"}
    assert body == expected


def test_HttpRestApiHandlerTest_kPathRegex(rest):
    """/v1/models is the REST API's; /statuspage and /index are not (no handler: 404)."""
    code, _, body = process(rest, "GET", "/v1/models")
    assert code == 400 and "Missing model name" in body["error"]
    for path in ("/statuspage", "/index"):
        assert process(rest, "GET", path)[0] == 404


@pytest.mark.parametrize(
    "method, path, fragment",
    [
        ("GET", "/v1/foo", "Malformed request"),
        ("POST", "/v1/foo", "Malformed request"),
        ("GET", "/v1/models", "Missing model name"),
        ("GET", "/v1/models/debug/model_name", "Malformed request"),
        ("POST", "/v1/models", "Malformed request"),
        ("GET", "/v1/models/foo:predict", "Malformed request"),
        ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
        ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
        ("POST", f"/v1/models/foo/versions/{UINT64_MAX}:regress", "Failed to convert version"),
        ("POST", "/v1/models/foo/metadata", "Malformed request"),
        ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
    ],
)
def test_HttpRestApiHandlerTest_UnsupportedApiCalls(rest, method, path, fragment):
    expect_error(process(rest, method, path), 400, fragment)


def test_HttpRestApiHandlerTest_PredictModelNameVersionErrors(rest):
    body = '{ "instances": [1] }'
    assert process(rest, "POST", "/v1/models/foo:predict", body)[0] == 404
    assert process(rest, "POST", "/v1/models/foo/versions/50:predict", body)[0] == 404
    assert process(rest, "POST", f"/v1/models/{MODEL}99:predict", body)[0] == 404


def test_HttpRestApiHandlerTest_PredictRequestErrors(rest):
    path = f"/v1/models/{MODEL}:predict"
    expect_error(process(rest, "POST", path, ""), 400, "JSON Parse error: The document is empty")
    expect_error(
        process(rest, "POST", path, "instances = [1, 2]"), 400, "JSON Parse error: Invalid value"
    )
    expect_error(
        process(rest, "POST", path, '{ "instances": ["x", "y"] }'),
        400,
        "not of expected type: float",
    )
    expect_error(
        process(
            rest,
            "POST",
            f"/v1/models/{MODEL}/labels/{NONEXISTENT_LABEL}:predict",
            '{ "instances": ["x", "y"] }',
        ),
        400,
        "Unrecognized servable version label",
    )
    expect_error(
        process(rest, "POST", path, '{ "signature_name": 100 }'),
        400,
        "'signature_name' key must be a string value.",
    )


def test_HttpRestApiHandlerTest_Predict(rest):
    expect_ok(
        process(
            rest, "POST", f"/v1/models/{MODEL}:predict", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}'
        ),
        {"predictions": [[2.5, 3.0], [3.5, 4.0]]},
    )
    expect_ok(
        process(
            rest,
            "POST",
            f"/v1/models/{MODEL}/versions/{VERSION}:predict",
            '{"instances": [1.0, 2.0]}',
        ),
        {"predictions": [2.5, 3.0]},
    )
    expect_ok(
        process(
            rest, "POST", f"/v1/models/{MODEL}/labels/{LABEL}:predict", '{"instances": [1.0, 2.0]}'
        ),
        {"predictions": [2.5, 3.0]},
    )
    expect_ok(
        process(
            rest,
            "POST",
            f"/v1/models/{MODEL}/versions/{VERSION}:predict",
            '{"signature_name": "serving_default", "instances": [3.0, 4.0]}',
        ),
        {"predictions": [3.5, 4.0]},
    )
    expect_ok(
        process(
            rest,
            "POST",
            f"/v1/models/{MODEL}/versions/{VERSION}:predict",
            '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}',
        ),
        {"outputs": [3.5, 4.0]},
    )


def test_HttpRestApiHandlerTest_Regress(rest):
    body = '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }'
    for path in (
        f"/v1/models/{MODEL}:regress",
        f"/v1/models/{MODEL}/versions/{VERSION}:regress",
        f"/v1/models/{MODEL}/labels/{LABEL}:regress",
    ):
        expect_ok(process(rest, "POST", path, body), {"results": [42]})


def test_HttpRestApiHandlerTest_Classify(rest):
    expect_ok(
        process(
            rest,
            "POST",
            f"/v1/models/{MODEL}:classify",
            '{"signature_name": "classify_x_to_y", "examples": [ { "x": 20.0 } ] }',
        ),
        {"results": [[["", 12]]]},
    )
    expect_ok(
        process(
            rest,
            "POST",
            f"/v1/models/{MODEL}/labels/{LABEL}:classify",
            '{"signature_name": "classify_x_to_y", "examples": [ { "x": 10.0 } ] }',
        ),
        {"results": [[["", 7]]]},
    )


def test_HttpRestApiHandlerTest_GetStatus(rest):
    expected = {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    for path in (
        f"/v1/models/{MODEL}",
        f"/v1/models/{MODEL}/versions/{VERSION}",
        f"/v1/models/{MODEL}/labels/{LABEL}",
    ):
        expect_ok(process(rest, "GET", path), expected)


def test_HttpRestApiHandlerTest_GetModelMetadata(rest):
    code, ctype, body = process(rest, "GET", f"/v1/models/{MODEL}/metadata")
    assert code == 200 and ctype == "application/json"
    assert sorted_object(body) == sorted_object(HALF_PLUS_TWO_2_VERSIONS_METADATA)
