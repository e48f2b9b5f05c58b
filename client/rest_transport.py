"""TF Serving's REST API as a transport: `predict()` and `metadata()` as the gRPC one has them,
the same `RpcError` codes (from the HTTP status), for HTTP-only ingress."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import ssl
import threading
import urllib.error
import urllib.request

from client.config import OOD_OUTPUTS, PREPROCESSING_OUTPUT, SERVING_PIXELS, ScoreConfig
from client.ood import from_columns
from client.pixels import ModelMetadata
from client.retry import RpcError
from client.wire import Prediction, parse_metadata, pick_target, pixel_array, shape_of

log = logging.getLogger(__name__)


HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class RestTransport:
    """POST `{"instances": [{"b64": ...}]}` to `/v1/models/<name>[...]:predict`.

    REST responses carry no model version: it is read once, at start, from the model's status
    (GET /v1/models/<name>[/versions/<v>|/labels/<l>]: the highest AVAILABLE version, which is
    where unpinned requests go), or None when the status cannot be read. A hot swap during a
    REST run is therefore not reflected in `model_version`; use gRPC when that matters.
    """

    def __init__(self, config: ScoreConfig):
        self.config = config
        scheme = "https" if config.tls else "http"
        self.bases = [
            t if "://" in t else f"{scheme}://{t}" for t in (x.rstrip("/") for x in config.target)
        ]
        self.headers = {"Content-Type": "application/json"}
        for name, value in parse_metadata(config.auth_header):
            self.headers[name] = value
        self.context = None
        if config.tls:
            self.context = ssl.create_default_context(cafile=config.root_certs)
            if config.client_cert:
                self.context.load_cert_chain(config.client_cert, config.client_key)
        self._next = itertools.count()
        self._batch = threading.local()
        self.model_version = self._status_version()

    def _model_path(self) -> str:
        path = f"/v1/models/{self.config.model_name}"
        if self.config.version is not None:
            path += f"/versions/{self.config.version}"
        elif self.config.version_label:
            path += f"/labels/{self.config.version_label}"
        return path

    def _open(self, url: str, body: bytes | None = None):
        request = urllib.request.Request(url, data=body, headers=self.headers)
        try:
            with urllib.request.urlopen(
                request, timeout=self.config.timeout, context=self.context
            ) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw).get("error", "")
            except ValueError:
                message = raw.decode("utf-8", "replace")[:500]
            code = HTTP_CODES.get(exc.code, "UNKNOWN")
            if code == "INVALID_ARGUMENT" and "signature" in message and "not found" in message:
                code = "FAILED_PRECONDITION"  # same HTTP 400, but bisecting cannot help
            too_large = exc.code == 413  # Payload Too Large: a smaller request can pass
            raise RpcError(code, message or f"HTTP {exc.code}", too_large=too_large) from None
        except TimeoutError:
            raise RpcError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise RpcError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None
            tls = isinstance(exc.reason, ssl.SSLError)
            raise RpcError("UNAVAILABLE", f"{url}: {exc.reason}", tls_failure=tls) from None
        except (ConnectionError, OSError) as exc:
            tls = isinstance(exc, ssl.SSLError)
            raise RpcError("UNAVAILABLE", f"{url}: {exc}", tls_failure=tls) from None

    def _status_version(self) -> int | None:
        if self.config.version is not None:
            return self.config.version
        try:
            status = self._open(self.bases[0] + self._model_path())
            available = [
                int(s["version"])
                for s in status.get("model_version_status", [])
                if s.get("state") == "AVAILABLE"
            ]
            return max(available) if available else None
        except (RpcError, ValueError, KeyError, TypeError) as exc:
            log.warning("model version unknown (status unavailable: %s); recording null", exc)
            return None

    def metadata(self, attempt: int = 0) -> ModelMetadata:
        """GET .../metadata: the signature_def as TF Serving's JSON (int64 sizes as strings)."""
        base = pick_target(self.bases, attempt, self._next, self._batch)
        body = self._open(f"{base}{self._model_path()}/metadata")
        try:
            defs = body["metadata"]["signature_def"]["signature_def"]
            signatures = {
                name: {
                    alias: (info.get("dtype", ""), shape_of(info["tensor_shape"].get("dim", [])))
                    for alias, info in signature.get("inputs", {}).items()
                }
                for name, signature in defs.items()
            }
            version = body.get("model_spec", {}).get("version")
        except (KeyError, TypeError, AttributeError) as exc:
            raise RpcError("INTERNAL", f"unexpected metadata from {base}: {exc!r}") from None
        return ModelMetadata(int(version) if version else None, signatures)

    def predict(self, images: list[bytes], attempt: int = 0, size: int | None = None):
        """A Prediction for encoded images (b64), or with `size` for pixel payloads (nested lists
        of integers: REST has no binary form for a uint8 tensor)."""
        base = pick_target(self.bases, attempt, self._next, self._batch)
        if size is None:
            signature = self.config.signature
            instances = [{"b64": base64.b64encode(i).decode("ascii")} for i in images]
        else:
            signature = SERVING_PIXELS
            instances = pixel_array(images, size).tolist()
        body = json.dumps({"signature_name": signature, "instances": instances}).encode()
        result = self._open(f"{base}{self._model_path()}:predict", body)
        rows = result.get("predictions", [])
        labels = [list(r["labels"]) for r in rows]
        scores = [[float(s) for s in r["top_scores"]] for r in rows]
        contract = [r[PREPROCESSING_OUTPUT] for r in rows if PREPROCESSING_OUTPUT in r]
        prediction = Prediction(labels, scores, self.model_version, contract if size else None)
        columns = {o: [r[o] for r in rows] for o in OOD_OUTPUTS if all(o in r for r in rows)}
        prediction.ood_score, prediction.is_ood = from_columns(columns if rows else {})
        return prediction

    def close(self) -> None:
        pass
