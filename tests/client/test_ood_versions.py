"""A version label moved during a run between a version with the OOD outputs and one exported
without them (as before the detector existed), on the real local server: the client asks for
`ood_score` and `is_ood` by what the version that answers has, so no row becomes an error."""

from __future__ import annotations

import pytest
from servertools import copy_version, free_port, start_server, two_version_config
from testconfig import MODEL

from client.config import ScoreConfig
from client.inputs import Item
from client.scorer import Scorer

OOD = {"ood_score", "is_ood"}


@pytest.fixture(scope="module")
def mixed_server(exported, trained, tmp_path_factory):
    """Version 1: the session's export (with the detector); version 2: the same classifier
    written without it. The label `stable` starts on 1; config reloads are allowed."""
    from export.model.preprocessing import Preprocessor
    from export.publishing import savedmodel

    base = tmp_path_factory.mktemp("mixed") / MODEL
    copy_version(exported.path, base, 1)
    plain = tmp_path_factory.mktemp("plain") / "version"
    preprocessor = Preprocessor.of(trained.config)
    savedmodel.write_saved_model(
        plain, trained.classifier, trained.extractor, preprocessor, trained.labels
    )
    copy_version(plain, base, 2)
    config = two_version_config(base.parent / "models.config", MODEL, base, {"stable": 1})
    server = start_server(
        [
            f"--port={free_port()}",
            "--host=127.0.0.1",
            f"--model_config_file={config}",
            "--file_system_poll_wait_seconds=0",
            "--allow_reload_config_requests",
        ]
    )
    yield server, base
    server.stop(0)


def move_label(server, base, version: int) -> None:
    """HandleReloadConfigRequest: `stable` now names `version` (both stay loaded)."""
    import grpc
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest()
    config = request.config.model_config_list.config.add(
        name=MODEL, base_path=str(base), model_platform="tensorflow"
    )
    config.model_version_policy.specific.versions.extend([1, 2])
    config.version_labels["stable"] = version
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            request, timeout=60
        )


@pytest.mark.parametrize("shadow", [False, True])
def test_a_label_moved_to_a_version_without_ood_outputs_and_back(mixed_server, good_images, shadow):
    server, base = mixed_server
    images = [(str(p), p.read_bytes()) for p in good_images[:12]]

    def items():
        """Batches of 2, one in flight: the label moves between the 2nd and 3rd batch, and
        between the 4th and 5th (each batch is answered before the next one is read)."""
        for i, (uri, data) in enumerate(images):
            if i == 5:
                move_label(server, base, 2)
            if i == 9:
                move_label(server, base, 1)
            yield Item(uri, data=data)

    target = f"127.0.0.1:{server.grpc_port}"
    pin = (
        {"shadow_version_label": "stable", "version": 1} if shadow else {"version_label": "stable"}
    )
    config = ScoreConfig(target=[target], model_name=MODEL, batch_size=2, concurrency=1, **pin)
    scorer = Scorer(config)
    try:
        rows = list(scorer.results(items()))
    finally:
        scorer.close()
        move_label(server, base, 1)
    assert [r.get("error") for r in rows] == [None] * 12
    answers = [r["shadow"] for r in rows] if shadow else rows
    assert [a["model_version"] for a in answers] == [1] * 4 + [2] * 4 + [1] * 4
    for answer in answers:  # the OOD outputs exactly where the version has them
        assert OOD & set(answer) == (OOD if answer["model_version"] == 1 else set())
