"""How well the exported model's OOD score tells digits from images that are not digits.

Features come from the current code's backbone and preprocessing (the demo's bottlenecks may be an
older preprocessing version); the detector is export/publishing/ood.py's, fitted on the training
split and calibrated on validation exactly as `xfer-export` does. Out-of-distribution images: the
photos scikit-image, scikit-learn and matplotlib ship (whole and as crops) and generated ones
(noise, gradients, stripes and checkerboards, shapes, text in letters). Prints JSON: AUROC of
`ood_score` (digits test split against those), the flag rate on the test split and on them.

    PYTHONPATH=. .venv/bin/python scripts/ood_check.py --data out/demo-move/digits
"""

from __future__ import annotations

import argparse
import io
import json
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _photos() -> list[np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    found = list(load_sample_images().images)
    for name in (
        "astronaut",
        "camera",
        "coffee",
        "chelsea",
        "rocket",
        "coins",
        "moon",
        "page",
        "text",
        "horse",
        "clock",
        "brick",
        "grass",
        "gravel",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "cat",
        "eagle",
        "logo",
        "colorwheel",
    ):
        try:
            found.append(np.asarray(getattr(skimage.data, name)()))
        except Exception:  # noqa: BLE001 - an image that needs a download is left out
            continue
    try:
        from matplotlib import cbook

        for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
            with cbook.get_sample_data(name) as f:
                found.append(np.asarray(Image.open(f).convert("RGB")))
    except Exception:  # noqa: BLE001
        pass
    return [
        p if p.dtype == np.uint8 else (255 * p / max(p.max(), 1)).astype(np.uint8) for p in found
    ]


def _crops(photo: np.ndarray, rng, count: int) -> list[np.ndarray]:
    """The whole photo and `count` random square crops of it (a quarter to all of its side)."""
    out = [photo]
    h, w = photo.shape[:2]
    for _ in range(count):
        side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out.append(photo[y : y + side, x : x + side])
    return out


def _generated(rng, count: int, size: int = 224) -> list[np.ndarray]:
    out = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    font = ImageFont.load_default(size=int(size * 0.4))
    for i in range(count):
        kind = i % 6
        if kind == 0:  # noise
            img = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
        elif kind == 1:  # gradient
            a, b = rng.uniform(-1, 1, 2)
            g = (a * xx + b * yy) - (a * xx + b * yy).min()
            img = np.stack([g / max(g.max(), 1e-6) * rng.uniform(80, 255)] * 3, -1)
            img = (img * rng.uniform(0.3, 1, 3)).astype(np.uint8)
        elif kind == 2:  # stripes / checkerboard texture
            f = rng.integers(2, 20)
            t = np.sin(2 * np.pi * f * xx) * (np.sin(2 * np.pi * f * yy) if i % 4 else 1)
            img = np.stack([(t > 0) * 255] * 3, -1).astype(np.uint8)
        else:
            im = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(im)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if kind == 3:  # shapes
                for _ in range(int(rng.integers(1, 5))):
                    x0, y0 = rng.integers(0, size - 40, 2)
                    x1, y1 = x0 + rng.integers(20, size - x0), y0 + rng.integers(20, size - y0)
                    box = [int(x0), int(y0), int(x1), int(y1)]
                    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
            else:  # text: letters only, no digits
                word = "".join(rng.choice(list(string.ascii_letters), int(rng.integers(1, 4))))
                draw.text((size * 0.1, size * 0.25), word, fill=colour, font=font)
            img = np.asarray(im)
        out.append(img)
    return out


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an outside image > score of an inside one), ties counting half."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([inside, outside]))
    n_in, n_out = len(inside), len(outside)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the digits' class folders")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--fpr", type=float, default=0.01)
    parser.add_argument("--crops", type=int, default=6, help="random crops per photo")
    parser.add_argument("--generated", type=int, default=120)
    parser.add_argument("--cache", help="npz of the digits' features, reused when present")
    args = parser.parse_args(argv)

    from export.data.dataset import SPLITS, TEST, TRAIN, VALIDATION, scan
    from export.features.extraction import FeatureModel, compute_features
    from export.model.backbones import BackboneConfig, build_feature_extractor
    from export.model.preprocessing import Preprocessor
    from export.publishing import ood
    from export.training.config import TrainConfig

    config = TrainConfig(data=args.data, backbone=args.backbone, weights=args.weights)
    extractor = build_feature_extractor(BackboneConfig.of(config))
    preprocessor = Preprocessor.of(config)
    if args.cache and Path(args.cache).exists():
        cached = np.load(args.cache)
        split_x = {s: cached[f"{s}_x"] for s in SPLITS}
        split_y = {s: cached[f"{s}_y"] for s in SPLITS}
    else:
        dataset = scan(args.data, config.split_config())
        table = compute_features(dataset.examples, extractor, preprocessor)
        splits = np.array([e.split for e in table.examples])
        ids = np.array([e.label_id for e in table.examples])
        split_x = {s: table.features[splits == s] for s in SPLITS}
        split_y = {s: ids[splits == s] for s in SPLITS}
        if args.cache:
            np.savez(
                args.cache,
                **{f"{s}_x": split_x[s] for s in SPLITS},
                **{f"{s}_y": split_y[s] for s in SPLITS},
            )

    rng = np.random.default_rng(0)
    photos = [c for p in _photos() for c in _crops(p, rng, args.crops)]
    generated = _generated(rng, args.generated)
    model = FeatureModel(extractor, preprocessor)
    outside = {}
    for name, images in (("photos", photos), ("generated", generated)):
        encoded = [_png(i) for i in images]
        outside[name] = np.concatenate(
            [model.features(encoded[i : i + 32])[0] for i in range(0, len(encoded), 32)]
        )

    num_classes = int(max(split_y[TRAIN].max(), split_y[TEST].max())) + 1
    detector = ood.fit(split_x[TRAIN], split_y[TRAIN], num_classes)
    detector = ood.calibrate(detector, split_x[VALIDATION], args.fpr, VALIDATION)
    test = ood.scores(detector, split_x[TEST])
    result = {
        "backbone": args.backbone,
        "images": {s: len(split_y[s]) for s in SPLITS} | {k: len(v) for k, v in outside.items()},
        "shrinkage": round(detector.shrinkage, 4),
        "threshold": round(detector.threshold, 2),
        "fpr": args.fpr,
        "test_flag_rate": round(float(np.mean(test > detector.threshold)), 4),
    }
    everything = []
    for name, features in outside.items():
        scores = ood.scores(detector, features)
        everything.append(scores)
        result[f"auroc_{name}"] = round(auroc(test, scores), 4)
        result[f"flag_rate_{name}"] = round(float(np.mean(scores > detector.threshold)), 4)
    result["auroc_all"] = round(auroc(test, np.concatenate(everything)), 4)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
