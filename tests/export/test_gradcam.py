"""Grad-CAM must look where the evidence is: the class is a coloured square at a random place."""

import json
import subprocess
import sys

import numpy as np
import pytest
from imagegen import COLOURS, encode
from PIL import Image
from pngcheck import png_pixels
from testconfig import FAST_TRAINING, TINY

from export.cli.explain import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, main
from export.experiments.gradcam import default_layer, load_run, peak_xy

SIZE, SIDE = 96, 24  # the square is 25% of the image side


def square(colour, rng, width=SIZE, height=SIZE):
    """(image, box): a square (SIDE of the height; stretched with the width) on grey noise."""
    pixels = rng.normal(rng.integers(90, 160), 12, (height, width, 3))
    w, h = SIDE * width // SIZE, SIDE * height // SIZE
    x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
    pixels[y : y + h, x : x + w] = np.asarray(colour) + rng.normal(0, 8, 3)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), (x, y, w, h)


def inside(peak, box):
    x, y, w, h = box
    return x <= peak[0] < x + w and y <= peak[1] < y + h


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from export.training.config import TrainConfig
    from export.training.train import train

    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for i in range(24):
            (root / name / f"{i}.png").write_bytes(encode(square(colour, rng)[0], "PNG"))
    run = tmp_path_factory.mktemp("gradcam_run")
    config = TrainConfig(data=str(root), run_dir=str(run), image_size=SIZE, **TINY, **FAST_TRAINING)
    assert train(config).metrics["splits"]["test"]["accuracy"] >= 0.9
    return run


@pytest.fixture(scope="module")
def model(run_dir):
    return load_run(run_dir)


def held_out(n_per_class=7, seed=99, **size):
    rng = np.random.default_rng(seed)
    return [
        (name, *square(colour, rng, **size))
        for _ in range(n_per_class)
        for name, colour in COLOURS.items()
    ]


def test_heatmap_peak_is_inside_the_square(model):
    explainer = model.explainer()
    assert explainer.gradcam.layer == default_layer(model.extractor) == "conv2"
    images = held_out()
    hits = []
    for name, image, box in images:
        explanation = explainer.explain(encode(image, "PNG"))
        assert model.labels[explanation.predicted_id] == name
        hits.append(inside(explanation.peak, box))
    rate = np.mean(hits)
    assert rate >= 0.8, f"peak inside the square for only {rate:.0%} of {len(hits)} images"
    # The bar discriminates: always answering the image centre would fail it.
    centre = np.mean([inside((SIZE // 2, SIZE // 2), box) for _, _, box in images])
    assert centre < 0.5


def test_peak_is_in_original_pixels_for_a_non_square_image(model):
    """Preprocessing squashes 192x96 to 96x96; the peak must be mapped back per axis."""
    explainer = model.explainer()
    images = held_out(n_per_class=4, seed=7, width=2 * SIZE)
    hits = [inside(explainer.explain(encode(im, "PNG")).peak, box) for _, im, box in images]
    assert np.mean(hits) >= 0.8


def test_peak_xy_maps_heatmap_cells_to_original_pixels():
    heatmap = np.zeros((4, 4))
    heatmap[1, 2] = 1
    assert peak_xy(heatmap, width=12, height=4) == (7, 1)
    big = np.zeros((96, 96))
    big[10, 70] = 1
    assert peak_xy(big, 96, 96) == (70, 10)


def test_cli_overlays_json_lines_and_bad_files(run_dir, tmp_path, capsys):
    red, red_box = square(COLOURS["red"], np.random.default_rng(5))
    blue, blue_box = square(COLOURS["blue"], np.random.default_rng(6))
    (tmp_path / "red.png").write_bytes(encode(red, "PNG"))
    (tmp_path / "blue.jpg").write_bytes(encode(blue, "JPEG", quality=95))
    (tmp_path / "broken.png").write_bytes(b"this is not an image")
    args = ["--run-dir", str(run_dir), "--output", str(tmp_path / "out")]
    images = [tmp_path / n for n in ("red.png", "broken.png", "missing.jpg", "blue.jpg")]
    assert main([*args, *map(str, images)]) == EXIT_SOME_FAILED
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in rows] == [r["uri"] for r in rows] == list(map(str, images))
    assert f"{images[1]}: not a decodable image: unknown format" in err
    assert f"{images[2]}: unreadable: No such file or directory" in err
    assert "error" in rows[1] and "error" in rows[2]
    for row, box, label in ((rows[0], red_box, "red"), (rows[3], blue_box, "blue")):
        assert row["label"] == row["explained"] == label and 0.5 < row["score"] <= 1
        assert row["layer"] == "conv2" and inside((row["peak"]["x"], row["peak"]["y"]), box)
    overlay = png_pixels((tmp_path / "out" / "red_gradcam.png").read_bytes())
    assert overlay.shape == (SIZE, SIZE, 3)
    assert not np.array_equal(overlay, np.asarray(red))  # the heatmap is blended in
    assert (tmp_path / "out" / "blue_gradcam.png").exists()
    saved = (tmp_path / "out" / "explain.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in saved] == rows


def test_cli_class_and_layer_options(run_dir, tmp_path, capsys):
    red, _ = square(COLOURS["red"], np.random.default_rng(8))
    (tmp_path / "r.png").write_bytes(encode(red, "PNG"))
    args = ["--run-dir", str(run_dir), "--output", str(tmp_path), "--class", "blue"]
    assert main([*args, "--layer", "conv1", str(tmp_path / "r.png")]) == EXIT_OK
    row = json.loads(capsys.readouterr().out)
    assert (row["label"], row["explained"], row["layer"]) == ("red", "blue", "conv1")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "conv9"], "no spatial layer 'conv9'; close matches: conv"),
        (["--class", "purple"], "--class 'purple' is not a label of this run"),
    ],
)
def test_cli_usage_errors_exit_2(run_dir, tmp_path, capsys, extra, message):
    (tmp_path / "x.png").write_bytes(b"unused")
    args = ["--run-dir", str(run_dir), "--output", str(tmp_path), *extra, str(tmp_path / "x.png")]
    assert main(args) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_cli_not_a_run_dir_exits_2(tmp_path, capsys):
    assert main(["--run-dir", str(tmp_path), "image.png"]) == EXIT_USAGE
    assert "not the run dir of a finished xfer-train" in capsys.readouterr().err


def test_runnable_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "export.cli.explain", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "--run-dir" in done.stdout
