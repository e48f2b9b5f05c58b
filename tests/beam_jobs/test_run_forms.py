"""Every Beam job runs as its console script and as `python -m beam_jobs.JOB`, on the
multi-processing DirectRunner (issue 14, point 5).

Run as `python -m`, a job module is `__main__`, and what it defines reaches the worker processes
as `__main__.<name>`, which they cannot import: `Can't pickle <class '__main__.ImageKey'>` when
ImageKey was defined in beam_jobs/bottlenecks.py. Only worker processes expose it, hence
`--direct_running_mode=multi_processing` (the other tests' in-process runners never pickle
across processes). Each run is a subprocess: a new interpreter and two Beam worker processes,
each importing TensorFlow, about 30-40 s on two cores.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from imagegen import write_shapes_dataset
from testconfig import MODEL, bottleneck_args

import beam_jobs

ROOT = Path(beam_jobs.__file__).resolve().parents[1]
MULTI_PROCESSING = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
JOBS = {
    "bottlenecks": "xfer-bottlenecks",
    "predict": "xfer-beam-predict",
    "score": "xfer-beam-score",
}
FORMS = ["console script", "python -m"]
IMAGES = 6  # 3 classes x 2, plus one file that is not an image


def command(job: str, form: str) -> list[str]:
    if form == "python -m":
        return [sys.executable, "-m", f"beam_jobs.{job}"]
    script = Path(sys.executable).with_name(JOBS[job])
    assert script.exists(), f"{script}: the project is not installed in this interpreter's venv"
    return [str(script)]


def run_job(job: str, form: str, args: list[str], cwd: Path) -> None:
    env = {
        **os.environ,
        # This checkout first, in the job and in the worker processes it starts.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    done = subprocess.run(
        [*command(job, form), *args, *MULTI_PROCESSING],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{form} {job}: exit {done.returncode}\n{done.stderr[-4000:]}"


def read_jsonl(folder: Path, prefix: str) -> list[dict]:
    return [
        json.loads(line)
        for p in sorted(folder.glob(f"{prefix}-*.jsonl"))
        for line in p.read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = write_shapes_dataset(tmp_path_factory.mktemp("forms") / "images", per_class=2)
    (root / "blue" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


def assert_scored(out: Path, images: Path) -> None:
    """One row per image, each labelled with its folder's colour; the broken file an error row."""
    rows = read_jsonl(out, "predictions")
    assert len(rows) == IMAGES
    assert all(r["labels"][0] == Path(r["uri"]).parent.name for r in rows)
    assert [e["uri"] for e in read_jsonl(out, "errors")] == [str(images / "blue" / "broken.jpg")]


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_bottlenecks(form, images, tmp_path):
    run_job("bottlenecks", form, bottleneck_args(images, tmp_path / "out"), tmp_path)
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert metadata["total"] == IMAGES
    assert metadata["errors"] == 1
    assert metadata["job_options"]["pipeline"]["direct_running_mode"] == "multi_processing"
    assert list((tmp_path / "out").glob("features-*.tfrecord.gz"))


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_beam_predict(form, images, exported, tmp_path):
    model_args = ["--model_dir", str(exported.path.parent), "--version", exported.path.name]
    run_job(
        "predict", form, ["--input", str(images), "--output", str(tmp_path), *model_args], tmp_path
    )
    assert_scored(tmp_path, images)


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_beam_score(form, images, two_version_server, tmp_path):
    server = ["--target", f"127.0.0.1:{two_version_server.grpc_port}", "--model-name", MODEL]
    run_job("score", form, ["--input", str(images), "--output", str(tmp_path), *server], tmp_path)
    assert_scored(tmp_path, images)


@pytest.mark.parametrize("job", JOBS)
def test_python_m_runs_the_importable_module(job, monkeypatch):
    """`python -m beam_jobs.JOB` calls `main` of the module imported as `beam_jobs.JOB` (as the
    console script does), not the `__main__` copy: nothing the workers unpickle is `__main__.*`."""
    module = importlib.import_module(f"beam_jobs.{job}")
    called = []
    monkeypatch.setattr(module, "main", lambda: called.append(job) or 0)
    monkeypatch.setattr(sys, "argv", [module.__file__, "--help"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module(f"beam_jobs.{job}", run_name="__main__")
    assert (called, exit_.value.code) == ([job], 0)
