"""Issue 14.1: what export writes has the modes the umask allows, so TF Serving's uid can read it.

A version used to be created 0700 with 0600 files (tempfile's private modes), and TF Serving's
image (uid 10001) failed on a model another uid exported with "SavedModel file does not exist".
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from otheruser import OTHER_UID, files_under, read_everything_as, shared_dir, skip_unless_root

from export import fsutil
from export.publishing.publish import publish


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def modes(root: Path) -> dict[str, int]:
    """Permission bits of root and of everything under it, by relative path."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def expected_modes(root: Path, umask: int) -> dict[str, int]:
    """What a plain mkdir/open gives under `umask`: 0777/0666 less the mask."""
    return {name: (0o777 if (root / name).is_dir() else 0o666) & ~umask for name in modes(root)}


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=lambda m: f"umask{m:03o}")
def test_published_version_and_atomic_writes_follow_the_umask(tmp_path, umask):
    def write(directory: Path, version: int) -> None:
        (directory / "variables").mkdir()
        fsutil.atomic_write_bytes(directory / "saved_model.pb", b"graph")
        fsutil.atomic_write_text(directory / "assets" / "labels.txt", "a\nb\n")
        fsutil.atomic_write_json(directory / "assets.extra" / "model_card.json", {"v": version})

    previous = os.umask(umask)
    try:
        version, path, _ = publish(tmp_path / "m", write, lambda directory: None)
        fsutil.atomic_write_json(tmp_path / "run" / "metrics.json", {})
    finally:
        os.umask(previous)
    assert (version, path) == (1, tmp_path / "m" / "1")
    assert modes(path) == expected_modes(path, umask)
    assert modes(path)["."] == 0o777 & ~umask  # 0755 under 022, 0700 under 077: the user's choice
    assert stat.S_IMODE((tmp_path / "run" / "metrics.json").stat().st_mode) == 0o666 & ~umask


def test_exported_version_and_run_directory_have_the_umask_modes(exported, trained):
    umask = current_umask()
    assert modes(exported.path) == expected_modes(exported.path, umask)
    run_dir = Path(trained.run_dir)  # made by pytest (0700); what training wrote is checked
    assert (run_dir / "report.html").exists()
    found, expected = modes(run_dir), expected_modes(run_dir, umask)
    del found["."], expected["."]
    assert found == expected


def test_another_uid_reads_every_file_of_the_version_and_the_run(exported, trained):
    """Exported as this uid (root), read as TF Serving's uid 10001."""
    skip_unless_root()
    if current_umask() & 0o005:
        pytest.skip(f"umask {current_umask():03o} keeps other users out, as its owner chose")
    with shared_dir() as shared:
        # pytest's basetemp is 0700 (root only), so the outputs are copied with their modes
        # (copytree keeps them) to a directory uid 10001 can reach.
        version = shutil.copytree(exported.path, shared / "shapes" / "1")
        run = shutil.copytree(trained.run_dir, shared / "run")
        run.chmod(0o755)  # made by pytest (0700), not by training
        result = read_everything_as(OTHER_UID, version, run)
        assert result["failures"] == []
        assert result["read"] == files_under(version, run) > 5
