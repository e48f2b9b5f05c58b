"""report.html: every section, every image inline and real, and a browser draws it."""

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from pngcheck import png_pixels
from testconfig import FAST_TRAINING, TINY

from export.cli.report import main as report_main
from export.experiments.report_html import REPORT_FILE, SECTIONS

CHROMIUM = "/usr/bin/chromium"
IMAGE_SECTIONS = [s for s in SECTIONS if s not in ("config", "data", "metrics")]


class ReportParser(HTMLParser):
    """Sections by id, with the images and text inside each; every external reference."""

    def __init__(self):
        super().__init__()
        self.order: list[str] = []
        self.images: dict[str, list[str]] = {}
        self.text: dict[str, str] = {}
        self.external: list[str] = []
        self.tags: set[str] = set()
        self._section = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self._section = attrs["id"]
            self.order.append(self._section)
            self.images[self._section] = []
            self.text[self._section] = ""
        if tag == "img":
            self.images.setdefault(self._section, []).append(attrs.get("src", ""))
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is not None and not value.startswith(("data:", "#")):
                self.external.append(value)

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._section:
            self.text[self._section] += data


def parse(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def report(trained) -> Path:
    path = trained.run_dir / REPORT_FILE
    assert path.exists(), "train_and_report() did not write report.html"
    return path


def check_images(parsed: ReportParser) -> int:
    count = 0
    for section, sources in parsed.images.items():
        for src in sources:
            assert src.startswith("data:image/png;base64,"), f"{section}: {src[:40]}"
            png_pixels(base64.b64decode(src.split(",", 1)[1], validate=True), min_colours=2)
            count += 1
    return count


def test_every_section_is_there_with_real_inline_images(report):
    parsed = parse(report)
    assert parsed.order == list(SECTIONS)
    for section in IMAGE_SECTIONS:
        assert parsed.images[section], f"section {section} has no image"
        assert "could not draw" not in parsed.text[section], parsed.text[section]
    assert check_images(parsed) >= len(IMAGE_SECTIONS)


def test_report_is_self_contained(report):
    parsed = parse(report)
    assert parsed.external == []
    assert not parsed.tags & {"script", "link", "iframe", "object"}


def test_data_and_metrics_sections_show_the_run(report, trained, shapes_root):
    parsed = parse(report)
    data = parsed.text["data"]
    assert "Skipped files: 2" in data
    assert str(shapes_root / "red" / "notes.txt") in data and "unknown format" in data
    assert str(shapes_root / "blue" / "broken.jpg") in data
    test = trained.metrics["splits"]["test"]
    assert f"{test['accuracy']:.4f}" in parsed.text["metrics"]
    confusion = parsed.text["confusion-matrix"]
    assert f"final model on the test split, {test['count']} images" in confusion


def test_report_renders_in_chromium(report, tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("XFER_SKIP_BROWSER") == "1":
            pytest.skip("XFER_SKIP_BROWSER=1")
        pytest.fail(
            f"{CHROMIUM} is missing: run `make chromium` (or `apt-get install -y chromium`), "
            "or set XFER_SKIP_BROWSER=1 to skip this check"
        )
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            report.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    pixels = png_pixels(shot.read_bytes(), min_colours=200, min_side=1000)
    assert pixels.shape[:2] == (2000, 1280)
    # Not a blank page below the header either: the plots are drawn.
    png_pixels_lower = pixels[1000:]
    assert png_pixels_lower.std() > 5


def test_xfer_report_rebuilds_with_the_fine_tune_comparison(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained.run_dir, run)
    (run / REPORT_FILE).unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    head_only = {s: dict(v, accuracy=0.5, loss=1.25) for s, v in metrics["splits"].items()}
    metrics["fine_tune"] = {
        "from": "conv2",
        "trainable_layers": ["conv2"],
        "epochs_run": 2,
        "head_only_splits": head_only,
        "history": {"loss": [0.9, 0.4], "accuracy": [0.6, 0.9]},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert report_main(["--run-dir", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / REPORT_FILE)
    parsed = parse(run / REPORT_FILE)
    assert parsed.order == list(SECTIONS)
    check_images(parsed)
    text = parsed.text["metrics"]
    assert "Head only vs fine-tuned" in text and "1.2500" in text and "conv2" in text
    test = metrics["splits"]["test"]
    assert f"{test['accuracy'] - 0.5:+.4f}" in text
    assert len(parsed.images["training-curves"]) == 2  # the head's and the fine-tuning's
    # Features recomputed from the images: the same test images as training evaluated.
    assert f"test split, {test['count']} images" in parsed.text["confusion-matrix"]


def test_xfer_report_on_a_folder_that_is_not_a_run(tmp_path, caplog):
    assert report_main(["--run-dir", str(tmp_path)]) == 2
    assert re.search(r"no config\.json.*not the run dir", caplog.text)


def test_report_can_be_turned_off(shapes_root, tmp_path):
    from export.experiments.report import train_and_report
    from export.training.config import TrainConfig

    config = {**FAST_TRAINING, "epochs": 1, "report": False}
    train_and_report(TrainConfig(data=str(shapes_root), run_dir=str(tmp_path), **TINY, **config))
    assert (tmp_path / "metrics.json").exists() and not (tmp_path / REPORT_FILE).exists()
