"""Session-scoped fixtures: each expensive artefact (data, trained head, export) is built once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))

from imagegen import write_shapes_dataset  # noqa: E402
from testconfig import FAST_TRAINING, TINY  # noqa: E402


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """3 colour classes x 40 images (JPEG and PNG), plus a text file and a corrupt JPEG."""
    root = write_shapes_dataset(tmp_path_factory.mktemp("shapes"), per_class=40)
    (root / "red" / "notes.txt").write_text("not an image")
    (root / "blue" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return root


@pytest.fixture(scope="session")
def trained(shapes_root, tmp_path_factory):
    from export.train import TrainConfig, train

    config = TrainConfig(
        data=str(shapes_root),
        run_dir=str(tmp_path_factory.mktemp("run")),
        **TINY,
        **FAST_TRAINING,
    )
    return train(config)


@pytest.fixture(scope="session")
def export_config(shapes_root, tmp_path_factory):
    from export.exporter import ExportConfig

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
    from export.exporter import export_model

    return export_model(export_config, result=trained)


def pytest_addoption(parser):
    """The contract suite's flags, accepted by every pytest invocation."""
    sys.path.insert(0, str(Path(__file__).parent / "contract"))
    from contract_options import add_options

    add_options(parser)
