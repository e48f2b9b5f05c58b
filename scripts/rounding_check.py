"""Preprocessing version 3 against version 2: what rounding the resize to uint8 changes.

    python scripts/rounding_check.py --run-dir out/demo/runs/v1 --test-list out/demo/test.csv

Version 3 rounds the resize's output to uint8 before the normalisation (docs/preprocessing.md);
version 2 fed the fractional values on. For a trained run (the demo's: EfficientNet-Lite0 and
the digits head) this prints, on the test list's images as they are and resized by Pillow to
other sizes first (so that the contract's resize has fractional output to round), each
version's top-1 accuracy, their top-1 agreement and the largest score difference; and the same
agreement for the pretrained ImageNet classifier on the photographs that ship in installed
packages (skimage, scikit-learn). One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np


def version_2_pixels(contents: bytes, size: int, max_pixels: int):
    """The resize's float32 output, unrounded: version 2's model input before normalisation."""
    import tensorflow as tf

    from export.model.pixels import _decode
    from export.model.resize import resize_image

    return resize_image(*_decode(tf.constant(contents), max_pixels, size), size).numpy()


def compare(model, preprocessor, images: list[bytes], labels: list[int] | None) -> dict:
    import tensorflow as tf

    from export.model.pixels import EagerPixels

    size, max_pixels = preprocessor.image_size, preprocessor.max_pixels
    pixel_step = EagerPixels(size, max_pixels)
    v3 = np.stack([pixel_step(i)[0] for i in images])
    v2 = np.stack([version_2_pixels(i, size, max_pixels) for i in images])
    normalise = preprocessor.normalise
    p3 = np.asarray(model.predict(normalise(tf.constant(v3)).numpy(), verbose=0))
    p2 = np.asarray(model.predict(normalise(tf.constant(v2)).numpy(), verbose=0))
    row = {
        "images": len(images),
        "pixels_changed": round(float(np.mean(np.abs(v3 - v2) > 0)), 4),
        "pixels_mean_abs_grey_levels": round(float(np.mean(np.abs(v3 - v2))), 3),
        "top1_agreement": float(np.mean(p3.argmax(1) == p2.argmax(1))),
        "max_score_diff": float(np.max(np.abs(p3 - p2))),
    }
    if labels is not None:
        row["accuracy_v2"] = round(float(np.mean(p2.argmax(1) == labels)), 4)
        row["accuracy_v3"] = round(float(np.mean(p3.argmax(1) == labels)), 4)
    return row


def resized(data: bytes, side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize((side, side), Image.BICUBIC).save(buf, "PNG")
    return buf.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="a finished xfer-train run")
    parser.add_argument("--test-list", required=True, help="uri,label CSV (the demo's test.csv)")
    parser.add_argument("--sides", default="224,300,160,97", help="sizes to present images at")
    args = parser.parse_args(argv)

    from types import SimpleNamespace

    from export.model.backbones import BackboneConfig
    from export.model.preprocessing import Preprocessor
    from export.training.runs import load_run_classifier

    classifier, _, _, config, labels = load_run_classifier(args.run_dir)
    preprocessor = Preprocessor.of(SimpleNamespace(**config))
    with open(args.test_list, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    images = [Path(r["uri"]).read_bytes() for r in rows]
    truth = [labels.index(r["label"]) for r in rows]
    result = {"run_dir": args.run_dir, "digits": {}}
    for side in map(int, args.sides.split(",")):
        shown = images if side == 224 else [resized(i, side) for i in images]
        result["digits"][f"{side}px"] = compare(classifier, preprocessor, shown, truth)
        print(side, result["digits"][f"{side}px"], file=sys.stderr)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from memory_bench import real_photos

    from export.pretrained.efficientnet_lite import EfficientNetLite0

    imagenet = EfficientNetLite0(include_top=True, weights="imagenet")
    photos = real_photos()
    lite = Preprocessor(BackboneConfig("efficientnet_lite0", weights="none"))
    result["imagenet_photos"] = compare(imagenet, lite, list(photos.values()), None)
    result["imagenet_photos"]["names"] = sorted(photos)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
