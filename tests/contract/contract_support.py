"""What the contract tests share: the target under test, requests built as a client builds them.

Kept out of conftest.py so test modules can import it by a name no other test folder uses.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp"}
UNKNOWN_MODEL = "xfer-contract-no-such-model"
UNKNOWN_LABEL = "xfer-contract-no-such-label"
UNKNOWN_VERSION = 987654321
TIMEOUT = 30.0


@dataclass(frozen=True)
class Sample:
    """One sample image: its bytes, format sniffed from the header, class folder (if any)."""

    path: Path
    data: bytes
    kind: str  # "jpeg" | "png" | "other"
    label: str | None

    @property
    def b64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


def sniff(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    return "other"


def load_samples(directory: Path) -> list[Sample]:
    """Images in `directory` and its class subfolders (the folder name is the expected label)."""
    samples = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        data = path.read_bytes()
        label = path.parent.name if path.parent != directory else None
        samples.append(Sample(path, data, sniff(data), label))
    return samples


@dataclass
class Target:
    """The server under test: addresses, model name, sample images, what it is expected to hold.

    `managed` is True for the local server the session starts itself: then every precondition
    (two versions, version labels) is ours to provide, and a missing one fails instead of skipping.
    """

    grpc_target: str
    rest_url: str
    model: str
    samples: list[Sample]
    class_labels: list[str] | None = None  # expected label set (None: derive from the model)
    version_labels: dict[str, int] | None = None  # None: probe "stable" / "canary"
    managed: bool = False
    notes: dict = field(default_factory=dict)

    def require(self, condition: bool, reason: str) -> None:
        """Skip (external target lacking a precondition) or fail (our own local server)."""
        if condition:
            return
        if self.managed:
            pytest.fail(f"local contract server is misconfigured: {reason}")
        pytest.skip(reason)

    def sample(self, kind: str | None = None) -> Sample:
        for sample in self.samples:
            if kind is None or sample.kind == kind:
                return sample
        self.require(False, f"no {kind or 'image'} sample among the --images given")
        raise AssertionError("unreachable")


def parse_version_labels(text: str) -> dict[str, int]:
    """`stable=1,canary=2` -> {"stable": 1, "canary": 2}."""
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, version = item.partition("=")
        if not sep or not version.strip().isdigit():
            raise pytest.UsageError(f"--version-labels: expected label=version, got {item!r}")
        labels[name.strip()] = int(version)
    return labels


# ---------------------------------------------------------------- gRPC


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    """The RpcError a call raises; fails the test when it succeeds instead."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=TIMEOUT, **kwargs)
    return info.value


# ---------------------------------------------------------------- REST


def http(method: str, url: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    """(HTTP status, JSON body) for a REST call; error statuses are returned, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload)
        except ValueError:
            return exc.code, {"<non-JSON body>": payload.decode("utf-8", "replace")}


# ---------------------------------------------------------------- requests, as a client builds them


def string_tensor(values: list[bytes], shape: list[int] | None = None):
    """A DT_STRING TensorProto of raw bytes (what tf.make_tensor_proto([...]) produces)."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    dims = shape if shape is not None else [len(values)]
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
        ),
        string_val=values,
    )


def set_version(model_spec, version: int | None = None, label: str | None = None) -> None:
    if version is not None:
        model_spec.version.value = version
    if label is not None:
        model_spec.version_label = label


def predict_request(
    target: Target,
    images: list[bytes],
    version: int | None = None,
    label: str | None = None,
    signature: str = "",
    input_key: str | None = None,
):
    from tensorflow_serving.apis import predict_pb2

    from export.contract import INPUT_KEY

    request = predict_pb2.PredictRequest()
    request.model_spec.name = target.model
    request.model_spec.signature_name = signature
    set_version(request.model_spec, version, label)
    request.inputs[input_key or INPUT_KEY].CopyFrom(string_tensor(images))
    return request


def classify_request(target: Target, images: list[bytes], version=None, label=None):
    from tensorflow_serving.apis import classification_pb2

    from export.contract import CLASSIFICATION, ENCODED_FEATURE

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = target.model
    request.model_spec.signature_name = CLASSIFICATION
    set_version(request.model_spec, version, label)
    for data in images:
        example = request.input.example_list.examples.add()
        example.features.feature[ENCODED_FEATURE].bytes_list.value.append(data)
    return request


def metadata_request(target: Target, version=None, label=None, model: str | None = None):
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model or target.model
    set_version(request.model_spec, version, label)
    return request
