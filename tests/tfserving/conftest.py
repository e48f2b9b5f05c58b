"""Fixtures of the TF Serving port: upstream's test models, written once per session, and the
launcher that starts servers as upstream's RunServer does (tests/tfserving/tfs_harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tfs_harness import Launcher, external_command, option
from tfs_models import write_testdata


@pytest.fixture(scope="session")
def testdata(tmp_path_factory) -> Path:
    """Upstream's servables/tensorflow/testdata/ layout, generated with its scripts' graphs."""
    return write_testdata(tmp_path_factory.mktemp("tfs-testdata"))


@pytest.fixture(scope="session")
def launcher(request, tmp_path_factory):
    launcher = Launcher(
        external_command(option(request.config)), tmp_path_factory.mktemp("tfs-servers")
    )
    yield launcher
    launcher.stop_all()
