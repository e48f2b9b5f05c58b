"""The contract suite's target: a server given on the command line, or a local one started here.

Options (registered by tests/conftest.py for every pytest invocation; each also read from an
environment variable):

  --grpc-target host:port       XFER_CONTRACT_GRPC
  --rest-target http://h:port   XFER_CONTRACT_REST
  --model-name NAME             XFER_CONTRACT_MODEL
  --images DIR                  XFER_CONTRACT_IMAGES          (class subfolders = labels)
  --class-labels FILE|a,b,c     XFER_CONTRACT_CLASS_LABELS    (default: from the model)
  --version-labels stable=1,..  XFER_CONTRACT_VERSION_LABELS  (default: probe stable/canary)
  --wait-seconds N              XFER_CONTRACT_WAIT            (for a version to be AVAILABLE)

Without a target, a session fixture publishes the session's exported model as versions 1 and 2
(labels stable=1, canary=2, a `specific` version policy) and starts the local server
(serving.server.ModelServer, in-process) on free ports, so the CI run exercises every test.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from contract_options import option
from contract_support import (
    TIMEOUT,
    Target,
    classify_request,
    load_samples,
    parse_version_labels,
    sniff,
)
from contract_support import (
    metadata_request as metadata_request_for,
)
from servertools import LABELS as LOCAL_VERSION_LABELS  # the shared server's


def _class_labels(text: str | None) -> list[str] | None:
    if not text:
        return None
    path = Path(text)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


def _generated_samples(directory: Path) -> Path:
    """A JPEG and a PNG any image model can score (no class folders: labels from the model)."""
    from imagegen import encode, square_image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    (directory / "sample.jpg").write_bytes(encode(square_image((220, 40, 40), 64, rng), "JPEG"))
    (directory / "sample.png").write_bytes(encode(square_image((40, 60, 220), 64, rng), "PNG"))
    return directory


@pytest.fixture(scope="session")
def target(request, tmp_path_factory):
    config = request.config
    grpc_target = option(config, "--grpc-target")
    rest_url = option(config, "--rest-target")
    images = option(config, "--images")
    if grpc_target or rest_url:
        model = option(config, "--model-name")
        if not model:
            pytest.fail("--model-name / XFER_CONTRACT_MODEL is required with a target")
        directory = (
            Path(images) if images else _generated_samples(tmp_path_factory.mktemp("samples"))
        )
        samples = load_samples(directory)
        if not samples:
            pytest.fail(f"--images {directory}: no .jpg/.png/.gif/.bmp files found")
        labels = option(config, "--version-labels")
        yield Target(
            grpc_target=grpc_target or "",
            rest_url=(rest_url or "").rstrip("/"),
            model=model,
            samples=samples,
            class_labels=_class_labels(option(config, "--class-labels")),
            version_labels=parse_version_labels(labels) if labels else None,
        )
        return
    yield from _local_target(request, tmp_path_factory)


def _local_target(request, tmp_path_factory):
    """Versions 1 and 2 of the session's export behind the local server, on free ports."""
    exported = request.getfixturevalue("exported")
    shapes_root = request.getfixturevalue("shapes_root")
    server = request.getfixturevalue("two_version_server")
    model = request.getfixturevalue("served_base").name
    # sample images: one JPEG and one PNG per class, in class folders, as a user would pass them
    samples_dir = tmp_path_factory.mktemp("contract-samples")
    for class_dir in sorted(p for p in shapes_root.iterdir() if p.is_dir()):
        kinds = {}
        for path in sorted(class_dir.iterdir()):
            kind = sniff(path.read_bytes()[:8])
            if kind in ("jpeg", "png") and kind not in kinds and path.name.startswith("img_"):
                kinds[kind] = path
        (samples_dir / class_dir.name).mkdir()
        for path in kinds.values():
            shutil.copy(path, samples_dir / class_dir.name / path.name)

    labels_txt = Path(exported.path) / "assets" / "labels.txt"
    yield Target(
        grpc_target=f"127.0.0.1:{server.grpc_port}",
        rest_url=f"http://127.0.0.1:{server.rest_port}",
        model=model,
        samples=load_samples(samples_dir),
        class_labels=_class_labels(str(labels_txt)),
        version_labels=dict(LOCAL_VERSION_LABELS),
        managed=True,
    )


# ---------------------------------------------------------------- clients


@pytest.fixture(scope="session")
def channel(request, target):
    if not target.grpc_target:
        pytest.skip("no gRPC target (--grpc-target / XFER_CONTRACT_GRPC)")
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    with grpc.insecure_channel(target.grpc_target, options=options) as ch:
        wait_until_available(request, target, ch)
        yield ch


def available_versions(model_stub, model: str) -> list[int]:
    from tensorflow_serving.apis import get_model_status_pb2

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = model
    response = model_stub.GetModelStatus(status_request, timeout=TIMEOUT)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    return sorted(s.version for s in response.model_version_status if s.state == available)


def wait_until_available(request, target, channel) -> None:
    """A started container needs a while to load: wait for an AVAILABLE version (--wait-seconds)."""
    from tensorflow_serving.apis import model_service_pb2_grpc

    model_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    wait = float(option(request.config, "--wait-seconds") or 60)
    deadline = time.monotonic() + wait
    while True:
        try:
            if available_versions(model_stub, target.model):
                return
            error = "no AVAILABLE version yet"
        except grpc.RpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
        if time.monotonic() > deadline:
            pytest.fail(f"model {target.model!r} at {target.grpc_target} after {wait:g} s: {error}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def stub(channel):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="session")
def model_stub(channel):
    from tensorflow_serving.apis import model_service_pb2_grpc

    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="session")
def rest(target) -> str:
    """Base URL of the model's REST resource: http://host:port/v1/models/<name>."""
    if not target.rest_url:
        pytest.skip("no REST target (--rest-target / XFER_CONTRACT_REST)")
    return f"{target.rest_url}/v1/models/{target.model}"


# ---------------------------------------------------------------- what the target serves


@pytest.fixture(scope="session")
def versions(target, model_stub) -> list[int]:
    """AVAILABLE versions of the model, from GetModelStatus."""
    return available_versions(model_stub, target.model)


@pytest.fixture(scope="session")
def latest(versions) -> int:
    return versions[-1]


@pytest.fixture(scope="session")
def two_versions(target, versions) -> list[int]:
    """The oldest and the latest served version; skips for a target serving only one."""
    target.require(
        len(versions) >= 2,
        f"target serves only version(s) {versions} of {target.model!r}; these tests need two: "
        "start tensorflow/serving with --model_config_file giving "
        "model_version_policy { specific { versions: 1 versions: 2 } } (docs/serving.md)",
    )
    return [versions[0], versions[-1]]


@pytest.fixture(scope="session")
def version_labels(target, stub, versions) -> dict[str, int]:
    """label -> version: as configured (--version-labels), else probed for stable / canary."""
    if target.version_labels is not None:
        target.require(bool(target.version_labels), "--version-labels is empty")
        return target.version_labels
    found = {}
    for label in ("stable", "canary"):
        metadata_request = metadata_request_for(target, label=label)
        try:
            response = stub.GetModelMetadata(metadata_request, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                continue  # "Unrecognized servable version label: <label>"
            raise
        found[label] = response.model_spec.version.value
    target.require(
        bool(found),
        f"target has no version label 'stable' or 'canary' for {target.model!r}: start "
        "tensorflow/serving with --model_config_file holding version_labels, or pass "
        "--version-labels label=version,... (docs/serving.md)",
    )
    return found


@pytest.fixture(scope="session")
def label_list(target, stub) -> list[str]:
    """The model's class labels in class-index order, from the `classification` signature.

    The exported model's Classify output lists every class, in index order, for each example.
    When an expected label set was given (--class-labels, or labels.txt for the local server),
    the model's must equal it.
    """
    response = stub.Classify(classify_request(target, [target.sample().data]), timeout=TIMEOUT)
    labels = [c.label for c in response.result.classifications[0].classes]
    if target.class_labels is not None:
        assert sorted(labels) == sorted(target.class_labels), (
            f"model's classes {labels} != expected label set {target.class_labels}"
        )
    folders = {s.label for s in target.samples if s.label is not None}
    assert folders <= set(labels), (
        f"sample class folders {sorted(folders - set(labels))} are not labels of the model"
    )
    return labels
