"""HTTP/REST API with TF Serving's routes, JSON and status codes, and the Prometheus endpoint.

Routes (http_rest_api_util.cc, case-insensitive):
  POST /v1/models/<name>[/versions/<v>|/labels/<l>]:(predict|classify|regress)
  GET  /v1/models/<name>[/versions/<v>|/labels/<l>][/metadata]
Errors are `{"error": "<message>"}` with ToHTTPStatusCode's mapping (errors.HTTP_STATUS).
A POST's model runs must end within `timeout_in_ms` (--rest_api_timeout_in_ms, when > 0) of the
request being read, as HttpRestApiHandler's run_options_ (serving/deadlines.py): else 504.
The HTTP server that carries it, with its limits on what clients can hold, is
serving/http_server.py (RestServer).
"""

from __future__ import annotations

import logging
import re
import urllib.parse

from google.protobuf import json_format

from serving import deadlines, json_request, json_response
from serving.api import ServingApi
from serving.errors import ServingError, from_tf_error, invalid
from serving.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

PREDICTION_API = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
MODEL_STATUS_API = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
REST_API = re.compile(r"/v1/.*", re.IGNORECASE)


def _json(message) -> str:
    return json_format.MessageToJson(message, always_print_fields_with_no_presence=True, indent=1)


def metadata_json(response) -> str:
    """ToJsonString(GetModelMetadataResponse): the Any unpacked, proto field names kept."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)

    def dump(message):
        return json_format.MessageToJson(
            message,
            always_print_fields_with_no_presence=True,
            preserving_proto_field_name=True,
            indent=1,
        )

    return (
        '{\n"model_spec":' + dump(response.model_spec) + ',\n"metadata": {"signature_def": '
        + dump(signature_map) + "}\n}\n"
    )  # fmt: skip


class RestApi:
    """Dispatch (method, path, body) -> (HTTP status, content type, body); no sockets here."""

    def __init__(self, api: ServingApi, metrics_path: str | None = None, timeout_in_ms: int = 0):
        self.api = api
        self.metrics_path = metrics_path
        self.timeout_in_ms = timeout_in_ms  # 0 or less: none

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        path = urllib.parse.urlsplit(path).path
        if method == "GET" and self.metrics_path and path == self.metrics_path:
            return 200, CONTENT_TYPE, self.api.metrics.exposition()
        if not REST_API.fullmatch(path):
            return 404, "text/plain", b""
        try:
            text = self._dispatch(method, path, body)
            return 200, "application/json", text.encode("utf-8")
        except ServingError as exc:
            return (
                exc.http_status,
                "application/json",
                json_response.error_json(exc.message).encode(),
            )
        except Exception as exc:  # noqa: BLE001 - a request never takes the server down
            if hasattr(exc, "error_code"):
                error = from_tf_error(exc)
            else:
                log.exception("internal error for %s %s", method, path)
                error = ServingError(
                    __import__("grpc").StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
                )
            return (
                error.http_status,
                "application/json",
                json_response.error_json(error.message).encode(),
            )

    def _dispatch(self, method: str, path: str, body: bytes) -> str:
        malformed = invalid(f"Malformed request: {method} {path}")
        if method == "POST":
            timeout = self.timeout_in_ms / 1000 if self.timeout_in_ms > 0 else None
            deadline = deadlines.after(timeout)
            match = PREDICTION_API.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, verb = match.groups()
            name, version, label = _decode(name, version, label)
            doc = json_request.parse_json(body)
            verb = verb.lower()
            if verb == "predict":
                outputs, form = self.api.predict_json(name, version, label, doc, deadline=deadline)
                return json_response.predict_response(outputs, form)
            return self._classify_or_regress(verb, name, version, label, doc, deadline)
        if method == "GET":
            match = MODEL_STATUS_API.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, sub = match.groups()
            if not name:
                raise invalid("Missing model name in request.")
            name, version, label = _decode(name, version, label)
            if sub:
                from tensorflow_serving.apis import get_model_metadata_pb2

                request = get_model_metadata_pb2.GetModelMetadataRequest(
                    metadata_field=["signature_def"]
                )
                _fill_spec(request.model_spec, name, version, label)
                return metadata_json(self.api.metadata(request, "REST"))
            from tensorflow_serving.apis import get_model_status_pb2

            request = get_model_status_pb2.GetModelStatusRequest()
            _fill_spec(request.model_spec, name, version, label)
            return _json(self.api.status(request))
        raise malformed

    def _classify_or_regress(self, verb, name, version, label, doc, deadline) -> str:
        from tensorflow_serving.apis import classification_pb2, regression_pb2

        cls = (
            classification_pb2.ClassificationRequest
            if verb == "classify"
            else regression_pb2.RegressionRequest
        )
        request = cls()
        _fill_spec(request.model_spec, name, version, label)
        request.model_spec.signature_name = json_request.signature_name(doc)
        request.input.CopyFrom(json_request.classify_input(doc, verb))
        if verb == "classify":
            response = self.api.classify(request, "REST", deadline)
            return json_response.classify_response(response.result)
        return json_response.regress_response(self.api.regress(request, "REST", deadline).result)


def _decode(name, version, label):
    name = urllib.parse.unquote(name)
    label = urllib.parse.unquote(label) if label else ""
    number = int(version) if version else None
    if number is not None and number >= 2**63:  # absl::SimpleAtoi into int64 fails
        raise invalid(f"Failed to convert version: {version} to numeric.")
    return name, number, label


def _fill_spec(spec, name, version, label) -> None:
    spec.name = name
    if version is not None:
        spec.version.value = version
    elif label:
        spec.version_label = label
