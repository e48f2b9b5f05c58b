"""The two resize modes of the preprocessing contract, squash and center_crop, measured.

    PYTHONPATH=. .venv/bin/python scripts/resize_check.py --digits out/demo-move/digits

Transfer learning, the way xfer does it: EfficientNet-Lite0 with its ImageNet weights, features
through the contract in each mode, and a softmax head on them (multinomial logistic regression on
standardised features), scored by stratified 5-fold cross-validation over every image, so that
each image is a test image once. Datasets: the demo's digits (class folders, 224 x 224), the
faces and non-faces of Labeled Faces in the Wild that scikit-image ships (200 real photographs,
25 x 25), and views of the real photographs installed packages ship (each photograph a class,
its views cut at random places, sizes and aspect ratios from 1:2 to 2:1).

Views are also scored few-shot (1 and 3 training views per class, 20 draws), where 5-fold
cross-validation leaves nothing to tell apart.

ImageNet top-1 and top-5, for `xfer-classify`: the pretrained classifier on the photographs whose
subject is an ImageNet class, whole and cut to common aspect ratios around their centre; also with
the crop's padding 0 (the central square of the whole shorter side). And the pixel step's time in
each mode on the photographs, as a ratio.

One JSON object on stdout; progress on stderr. About 8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

MODES = ("squash", "center_crop")
FOLDS = 5

# Photographs whose subject is an ImageNet class: file -> the classes that name it.
LABELLED = {
    "chelsea.png": {"tabby", "tiger cat", "Egyptian cat"},
    "coffee.png": {"espresso", "cup", "coffee mug"},
    "rocket.jpg": {"missile", "projectile", "space shuttle"},
    "motorcycle_left.png": {"moped", "motor scooter"},
    "camera.png": {"tripod", "reflex camera"},
    "clock_motion.png": {"wall clock", "analog clock"},
    "china.jpg": {"palace", "monastery", "stupa"},
    "grace_hopper.jpg": {"military uniform"},
}
# Cuts around the centre for the ImageNet views: width:height.
ASPECTS = ((16, 9), (9, 16), (4, 3), (3, 4))


def encode(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def photo_files() -> dict[str, Path]:
    """The photographs scikit-image, scikit-learn and matplotlib ship, by file name."""
    import matplotlib
    import skimage
    import sklearn

    folders = [
        Path(skimage.__file__).parent / "data",
        Path(sklearn.__file__).parent / "datasets" / "images",
        Path(matplotlib.get_data_path()) / "sample_data",
    ]
    found = {}
    for folder in folders:
        for path in sorted(folder.glob("*")):
            if path.suffix in (".png", ".jpg"):
                found[path.name] = path
    return found


# Colour photographs (not textures, scans or drawings) for the views dataset.
VIEW_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "china.jpg", "flower.jpg", "grace_hopper.jpg", "camera.png", "coins.png", "moon.png",
    "hubble_deep_field.jpg",
)  # fmt: skip


def centre_cut(image: Image.Image, aspect: tuple[int, int]) -> Image.Image:
    """The largest centred cut of `image` with that width:height."""
    w, h = image.size
    a = aspect[0] / aspect[1]
    cw, ch = (w, round(w / a)) if w / h < a else (round(h * a), h)
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def random_views(image: Image.Image, count: int, rng) -> list[Image.Image]:
    """`count` cuts at random places: a fifth to two thirds of the area, width:height 1:2 to 2:1,
    each brought to 300 pixels on its longer side (as if photographed at one resolution)."""
    w, h = image.size
    views = []
    while len(views) < count:
        area = rng.uniform(0.2, 0.67) * w * h
        ratio = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if cw > w or ch > h or min(cw, ch) < 16:
            continue
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        view = image.crop((x, y, x + cw, y + ch))
        scale = 300 / max(cw, ch)
        views.append(view.resize((round(cw * scale), round(ch * scale)), Image.BICUBIC))
    return views


def features(images: list[bytes], mode: str, batch: int = 32) -> np.ndarray:
    from export.features.extraction import FeatureModel
    from export.model.backbones import BackboneConfig, build_feature_extractor
    from export.model.preprocessing import Preprocessor
    from export.model.resize_mode import ResizeMode

    config = BackboneConfig("efficientnet_lite0", "imagenet", resize=ResizeMode(mode))
    model = FeatureModel(build_feature_extractor(config), Preprocessor(config))
    out = []
    for start in range(0, len(images), batch):
        got, _ = model.features(images[start : start + batch])
        out.append(np.stack(got))
        print(f"  {mode}: {start + len(got)}/{len(images)}", end="\r", file=sys.stderr)
    print(file=sys.stderr)
    return np.concatenate(out)


def cross_validated(x: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per image, whether the head trained on the other folds classifies it right."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    right = np.zeros(len(y), bool)
    for train, test in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(x, y):
        head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        head.fit(x[train], y[train])
        right[test] = head.predict(x[test]) == y[test]
    return right


def few_shot(x: np.ndarray, y: np.ndarray, shots: int, repeats: int = 20) -> float:
    """Mean accuracy over `repeats` draws of `shots` training images per class, the rest tested
    (xfer-fewshot's protocol)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    scores = []
    for _ in range(repeats):
        train = np.zeros(len(y), bool)
        for label in np.unique(y):
            train[rng.choice(np.flatnonzero(y == label), shots, replace=False)] = True
        head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        head.fit(x[train], y[train])
        scores.append(np.mean(head.predict(x[~train]) == y[~train]))
    return round(float(np.mean(scores)), 4)


def transfer(name: str, images: list[bytes], labels: np.ndarray, shots=()) -> dict:
    print(f"{name}: {len(images)} images, {len(set(labels.tolist()))} classes", file=sys.stderr)
    x = {mode: features(images, mode) for mode in MODES}
    right = {mode: cross_validated(x[mode], labels) for mode in MODES}
    a, b = right[MODES[0]], right[MODES[1]]
    return {
        "images": len(images),
        "classes": len(set(labels.tolist())),
        **{f"accuracy_{m}": round(float(r.mean()), 4) for m, r in right.items()},
        "right_only_with_squash": int(np.sum(a & ~b)),
        "right_only_with_center_crop": int(np.sum(b & ~a)),
        **{f"{n}_shot_accuracy_{m}": few_shot(x[m], labels, n) for n in shots for m in MODES},
    }


def pixel_seconds(images: list[bytes], passes: int = 3) -> dict:
    """Seconds of the contract's pixel step (decode and resize) per mode, best of `passes`, and
    center_crop's cost as a ratio of squash's: measured in one run, as the benchmarks do."""
    import time

    from export.model.pixels import EagerPixels
    from export.model.resize_mode import ResizeMode

    best = {}
    for mode in MODES:
        step = EagerPixels(224, resize=ResizeMode(mode))
        step(images[0])  # traced
        times = []
        for _ in range(passes):
            start = time.perf_counter()
            for image in images:
                step(image)
            times.append(time.perf_counter() - start)
        best[mode] = min(times)
    return {
        "images": len(images),
        **{f"seconds_{m}": round(t, 3) for m, t in best.items()},
        "ratio_center_crop_to_squash": round(best["center_crop"] / best["squash"], 3),
    }


def digits(root: str, limit: int | None) -> tuple[list[bytes], np.ndarray]:
    paths = sorted(Path(root).glob("*/*.png"))
    if limit:
        paths = paths[:: max(1, len(paths) // limit)]
    classes = sorted({p.parent.name for p in paths})
    return [p.read_bytes() for p in paths], np.array([classes.index(p.parent.name) for p in paths])


def faces() -> tuple[list[bytes], np.ndarray]:
    import skimage.data

    pictures = skimage.data.lfw_subset()  # 100 faces, then 100 non-faces; floats in [0, 1]
    images = [encode(Image.fromarray((255 * p).round().astype(np.uint8))) for p in pictures]
    return images, np.array([0] * 100 + [1] * 100)


def photo_views(count: int) -> tuple[list[bytes], np.ndarray]:
    files = photo_files()
    rng = np.random.default_rng(0)
    images, labels = [], []
    for label, name in enumerate(n for n in VIEW_PHOTOS if n in files):
        for view in random_views(Image.open(files[name]).convert("RGB"), count, rng):
            images.append(encode(view))
            labels.append(label)
    return images, np.array(labels)


def imagenet(names: dict[str, set[str]]) -> dict:
    """Top-1 and top-5 of the ImageNet classifier in each mode, per photograph and view."""
    from export.model.imagenet_classifier import ImageNetClassifier
    from export.model.resize_mode import ResizeMode

    files = photo_files()
    items, truth = [], []
    for name, accepted in names.items():
        if name not in files:
            continue
        photo = Image.open(files[name]).convert("RGB")
        views = {"whole": photo} | {f"{w}:{h}": centre_cut(photo, (w, h)) for w, h in ASPECTS}
        for view, image in views.items():
            items.append((f"{name} {view}", encode(image), None))
            truth.append(accepted)
    result: dict = {"photos": sorted(n for n in names if n in files), "views": len(items)}
    modes = {mode: ResizeMode(mode) for mode in MODES}
    modes["center_crop_padding_0"] = ResizeMode("center_crop", 0)
    for mode, resize in modes.items():
        classifier = ImageNetClassifier(resize=resize)
        rows = classifier.classify(items, k=5)
        top1 = [top[0][0] in ok for (_, top, _), ok in zip(rows, truth)]
        top5 = [any(label in ok for label, _ in top) for (_, top, _), ok in zip(rows, truth)]
        whole = [r for r, (uri, _, _) in zip(top1, items) if uri.endswith(" whole")]
        result[mode] = {
            "top1": round(float(np.mean(top1)), 4),
            "top5": round(float(np.mean(top5)), 4),
            "top1_whole_photos": f"{sum(whole)}/{len(whole)}",
            "misses": [
                f"{uri}: {top[0][0]} {top[0][1]:.2f}"
                for ok, (uri, top, _) in zip(top1, rows)
                if not ok
            ],  # fmt: skip
        }
        print(f"imagenet {mode}: {result[mode]['top1']}", file=sys.stderr)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", required=True, help="the demo's digits class folders")
    parser.add_argument("--digits-limit", type=int, default=None, help="every n-th digit only")
    parser.add_argument("--views", type=int, default=20, help="views per photograph")
    args = parser.parse_args(argv)
    result = {
        "backbone": "efficientnet_lite0 (ImageNet weights), input 224, crop_padding 32, bicubic",
        "head": f"softmax (logistic regression), {FOLDS}-fold cross-validation",
        "transfer": {
            "digits": transfer("digits", *digits(args.digits, args.digits_limit)),
            "lfw_faces": transfer("lfw_faces", *faces()),
            "photo_views": transfer("photo_views", *photo_views(args.views), shots=(1, 3)),
        },
        "imagenet": imagenet(LABELLED),
        "pixel_step": pixel_seconds([encode(Image.open(p)) for p in photo_files().values()]),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
