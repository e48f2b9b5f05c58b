"""Client fixtures: the session's local TF-Serving-compatible server (tests/conftest.py,
`two_version_server`: versions 1 and 2 of the exported `shapes` model, labels stable=1 and
canary=2) and image sets to score."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def target(two_version_server) -> str:
    return f"127.0.0.1:{two_version_server.grpc_port}"


@pytest.fixture(scope="session")
def rest_target(two_version_server) -> str:
    return f"127.0.0.1:{two_version_server.rest_port}"


@pytest.fixture(scope="session")
def good_images(shapes_root) -> list[Path]:
    """The dataset's decodable images (the fixture also holds notes.txt and broken.jpg)."""
    return sorted(p for p in shapes_root.rglob("img_*") if p.suffix in (".jpg", ".png"))


@pytest.fixture(scope="session")
def many_images(good_images, tmp_path_factory) -> Path:
    """600 distinct files (copies of the dataset under class folders): long enough to interrupt."""
    root = tmp_path_factory.mktemp("many")
    for i in range(600):
        source = good_images[i % len(good_images)]
        folder = root / source.parent.name
        folder.mkdir(exist_ok=True)
        shutil.copyfile(source, folder / f"copy_{i:04d}{source.suffix}")
    return root
