"""Session-scoped fixtures: each expensive artefact (data, trained head, export) is built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from contract_options import add_options
from imagegen import write_shapes_dataset  # helper modules: pyproject's pythonpath
from testconfig import FAST_TRAINING, TINY, bottleneck_args
from tfs_harness import add_options as add_tfs_options

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """3 colour classes x 40 images (JPEG and PNG), plus a text file and a corrupt JPEG."""
    root = write_shapes_dataset(tmp_path_factory.mktemp("shapes"), per_class=40)
    (root / "red" / "notes.txt").write_text("not an image")
    (root / "blue" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return root


@pytest.fixture(scope="session")
def bottlenecks_dir(shapes_root, tmp_path_factory) -> Path:
    """The Beam job's output for the shared shapes dataset, 2 shards (DirectRunner): read by the
    Beam job's tests and by xfer-fewshot's."""
    from beam_jobs.bottlenecks import run

    out = tmp_path_factory.mktemp("bottlenecks")
    run(bottleneck_args(shapes_root, out, "--num_shards", "2"))
    return out


@pytest.fixture(scope="session")
def trained(shapes_root, tmp_path_factory):
    from export.experiments.report import train_and_report
    from export.training.config import TrainConfig

    config = TrainConfig(
        data=str(shapes_root),
        run_dir=str(tmp_path_factory.mktemp("run")),
        **TINY,
        **{**FAST_TRAINING, "report": True},  # the run whose report.html test_report checks
    )
    return train_and_report(config)


@pytest.fixture(scope="session")
def export_config(shapes_root, tmp_path_factory):
    from export.publishing.exporter import ExportConfig

    return ExportConfig(
        data=str(shapes_root),
        model_name="shapes",
        model_base_path=str(tmp_path_factory.mktemp("models") / "shapes"),
        **TINY,
        **FAST_TRAINING,
    )


@pytest.fixture(scope="session")
def exported(export_config, trained):
    """Version 1 of the `shapes` model, published through the gate."""
    from export.publishing.exporter import export_model

    return export_model(export_config, result=trained)


# The folders of tests/, longest first (minutes on 2 cores): the order in which pytest-xdist
# hands them to its workers, so that no long folder starts last.
FOLDERS_LONGEST_FIRST = (
    "export", "serving", "demo", "beam_jobs", "client", "tfserving", "contract",
)  # fmt: skip


def folder_of(nodeid: str) -> str:
    """tests/serving/test_api.py::t -> serving; tests/test_docs.py::t -> test_docs.py."""
    parts = nodeid.split("::")[0].split("/")
    return parts[1] if len(parts) > 1 else parts[0]


def pytest_xdist_make_scheduler(config, log):
    """`make test` (`-n 2 --dist loadgroup`): every test of one folder of tests/ runs on the same
    worker, so the folder's session fixtures (servers, exports) are built once (the root's by
    each worker that needs them). xdist's own loadgroup reads a node-id suffix that pytest 9.2
    no longer keeps, so the grouping is this scheduler's: load by scope, the scope a folder."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FolderScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return folder_of(nodeid)

    return FolderScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """In xdist's workers, the folders longest first (each keeps its own order): the scheduler
    hands them out in the order the workers collected them."""
    if not hasattr(config, "workerinput"):
        return

    def rank(item) -> int:
        name = folder_of(item.nodeid)
        return FOLDERS_LONGEST_FIRST.index(name) if name in FOLDERS_LONGEST_FIRST else 99

    items.sort(key=rank)


def pytest_addoption(parser):
    """The contract suite's flags, accepted by every pytest invocation (registered here, in the
    conftest every run loads first, so that `pytest --grpc-target ...` works from anywhere)."""
    add_options(parser)
    add_tfs_options(parser)


@pytest.fixture(scope="session")
def served_base(exported, tmp_path_factory) -> Path:
    """`<model>/1` and `<model>/2`: the exported version, copied (no second export)."""
    from servertools import copy_version

    base = tmp_path_factory.mktemp("served") / exported.path.parent.name
    copy_version(exported.path, base, 1)
    copy_version(exported.path, base, 2)
    return base


@pytest.fixture(scope="session")
def two_version_server(served_base, tmp_path_factory):
    """The local server with versions 1 and 2 (labels stable=1, canary=2), gRPC and REST on free
    ports, no batching: what the client and contract tests talk to."""
    from servertools import free_port, start_server, two_version_config

    config = two_version_config(
        tmp_path_factory.mktemp("configs") / "models.config", served_base.name, served_base
    )
    server = start_server(
        [
            f"--port={free_port()}",
            f"--rest_api_port={free_port()}",
            "--host=127.0.0.1",
            f"--model_config_file={config}",
            "--file_system_poll_wait_seconds=0",
        ]
    )
    yield server
    server.stop(0)
