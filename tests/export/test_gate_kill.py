"""Issue 14.10: an export killed during its gate leaves no process running, and the next gate run
removes the scratch directory it left (as the next publish removes a staging directory)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from servertools import wait_for

from export.publishing import gate

ROOT = Path(__file__).resolve().parents[2]

# An export reduced to its gate: run_gate on a published version, as export_model calls it.
DRIVER = """
import sys
from pathlib import Path
import numpy as np
from export.publishing.gate import run_gate
images = [Path(p).read_bytes() for p in sys.argv[2:]]
run_gate(sys.argv[1], images, np.zeros((len(images), 3)), np.zeros((len(images), 8)), top_k=3)
"""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return state, int(ppid)


def _gone(pid: int) -> bool:
    found = _stat(pid)
    return found is None or found[0] in "ZX"  # a zombie has exited; its reaper is init's business


def _importing_tensorflow(pid: int) -> bool:
    """The child has mapped TensorFlow's library: well into its work, the death signal armed."""
    try:
        return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _gate_children(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        found = _stat(int(entry.name))
        if found is None or found[1] != parent:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[1:3] == [b"-m", b"export.publishing.gate"]:  # exec'd, not just forked
            children.append(int(entry.name))
    return children


def _expected(exported, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """What the exporter compares the gate's outputs with (export_model's parity inputs)."""
    import tensorflow as tf

    from export.model.preprocessing import EagerPreprocessor, Preprocessor

    preprocess = EagerPreprocessor(Preprocessor.of(exported.train.config))
    batch = np.stack([preprocess(image)[0] for image in images])
    classifier, extractor = exported.train.classifier, exported.train.extractor
    scores = tf.function(lambda x: classifier(x, training=False))(batch).numpy()
    features = tf.function(lambda x: extractor(x, training=False))(batch).numpy()
    return scores, features


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the child through /proc")
def test_kill_9_during_the_gate_kills_its_child_and_the_next_gate_cleans_up(
    exported, shapes_root, tmp_path, monkeypatch
):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    image_paths = [shapes_root / "red" / "img_000.jpg", shapes_root / "green" / "img_001.png"]
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(exported.path), *map(str, image_paths)],
        cwd=ROOT,
        env=dict(os.environ, TMPDIR=str(scratch), TF_CPP_MIN_LOG_LEVEL="3"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[int] = []
    try:
        children = wait_for(
            lambda: _gate_children(driver.pid) or driver.poll() is not None,
            timeout=180,
            what="the gate's child process",
        )
        wait_for(
            lambda: all(map(_importing_tensorflow, children)) or driver.poll() is not None,
            timeout=60,
            what="the gate's child to import TensorFlow",
        )
        assert driver.poll() is None, "the gate finished before it could be interrupted"
        driver.send_signal(signal.SIGKILL)  # the child has seconds of loading and querying left
        driver.wait()
        killed_at = time.monotonic()
        wait_for(lambda: all(map(_gone, children)), timeout=3, what="the gate's child to die")
        print(f"gate child gone {time.monotonic() - killed_at:.2f}s after kill -9 of its parent")
    finally:
        for pid in children:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    [left] = scratch.glob(f"{gate.TMP_PREFIX}*")
    assert left.name.startswith(f"{gate.TMP_PREFIX}{driver.pid}-")

    # The next export's gate (in this process) removes it once its pid is gone, and its own.
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    images = [p.read_bytes() for p in image_paths]
    report = gate.run_gate(exported.path, images, *_expected(exported, images), top_k=3)
    assert report.signatures
    assert list(scratch.glob(f"{gate.TMP_PREFIX}*")) == []


def test_a_gate_child_whose_exporter_is_already_gone_exits_at_once(exported, shapes_root, tmp_path):
    """The exporter died between starting the child and the child arming its death signal."""
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    image = (shapes_root / "red" / "img_000.jpg").read_bytes()
    request = {"images": [base64.b64encode(image).decode()], "num_classes": 3, "top_k": 3}
    (tmp_path / "request.json").write_text(json.dumps({**request, "feature_dim": 8}))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "export.publishing.gate", "--saved-model", str(exported.path)]
        + ["--request", str(tmp_path / "request.json"), "--output", str(tmp_path / "out.npz")],
        cwd=ROOT,
        env=dict(os.environ, **{gate.PARENT_PID_ENV: str(dead.pid)}),
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 1 and not (tmp_path / "out.npz").exists()
    assert time.monotonic() - start < 5  # not a model load later
