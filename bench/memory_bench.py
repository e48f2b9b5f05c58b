"""Memory per image: how far preprocessing one large image raises a process's peak RSS.

  preprocess_rss_raise_png36_mb   the issue's case: a 6000x6000 PNG of ~100 KB, through the batched
                                  Preprocessor (what the exported graph's decode step runs), S=224
  preprocess_rss_raise_max_mb     the largest raise over every image below but the progressive
                                  4:4:4 JPEG (libjpeg holds its DCT coefficients: the exception)
  preprocess_rss_raise_png36_center_crop_mb   the same PNG in the center_crop resize mode
  jpeg_scaling_max_score_diff     version 2's reduced-DCT JPEG decoding vs version 1's full decode:
                                  the largest ImageNet softmax difference (EfficientNet-Lite0) over
                                  real photos in each ratio's regime; also top-1 agreement
Details: every image's raise after and before (the contract as of --before, from git).

Each figure is one fresh subprocess: TensorFlow imported, the function traced and run twice on a
small image of the same format, the image's bytes in memory, the peak reset (clear_refs 5); the
raise is VmHWM after one call minus VmRSS before it, in MiB (the project's "MB").
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(Path(__file__).parent), str(ROOT)]  # this tree's export/, whatever is installed
from common import record  # noqa: E402

# The last commit whose preprocessing was version 1 (full decode, float32 copy before resizing).
BEFORE = "df919f4"
ADDRESS_SPACE_LIMIT = 12 << 30  # version 1 on the extreme images would otherwise take the machine
GOAL_MB = 150

CHILD = r"""
import io, json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
from PIL import Image
from export.model.backbones import BackboneConfig
from export.model.preprocessing import Preprocessor

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

path, size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
crop = {}
if mode != "squash":
    from export.model.resize_mode import ResizeMode
    crop = {"resize": ResizeMode(mode)}
pre = Preprocessor(BackboneConfig("mobilenet_v2", weights="none", image_size=size, **crop))
fn = tf.function(pre.batch, input_signature=[tf.TensorSpec([None], tf.string)])
fmt = {"jpg": "JPEG", "png": "PNG", "bmp": "BMP", "gif": "GIF"}[path.rsplit(".", 1)[1]]
small = io.BytesIO()
Image.new("RGB", (300, 200), (1, 2, 3)).save(small, fmt)
for _ in range(2):
    fn(tf.constant([small.getvalue()])).numpy()
with open(path, "rb") as f:
    data = tf.constant([f.read()])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
started = time.perf_counter()
try:
    fn(data).numpy()
    outcome = "ok"
except tf.errors.OpError as exc:
    from export.model.preprocessing import error_reason
    outcome = "refused: " + error_reason(exc)
print(json.dumps({"raise_mb": round(status("VmHWM") - before, 1),
                  "seconds": round(time.perf_counter() - started, 2), "outcome": outcome}))
"""


def smooth(width: int, height: int, seed: int = 0):
    """A photo-like picture: random colours bilinearly stretched (compresses like a plain photo)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize((width, height), Image.BILINEAR)


def gif_frame_bomb(width: int, height: int) -> bytes:
    """A GIF whose logical screen says 16x16 and whose one frame is width x height."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("P", (width, height), 0).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = (16).to_bytes(2, "little") + (16).to_bytes(2, "little")
    return bytes(data)


def make_images(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what it is). Sizes at or under the default 40,000,000-pixel limit."""
    import numpy as np
    from PIL import Image

    images: dict[str, tuple[Path, str]] = {}

    def save(name, picture, fmt, what, **options):
        path = folder / name
        picture.save(path, fmt, **options)
        images[name] = (path, what)

    flat = Image.new("RGB", (6000, 6000), (200, 100, 50))
    save("flat_6000x6000.png", flat, "PNG", "the issue's PNG: 36 MP, one colour")
    save("palette_6000x6000.bmp", flat.convert("P"), "BMP", "8-bit palette BMP, 36 MP")
    save("rgb_6000x6000.bmp", flat, "BMP", "24-bit BMP, 36 MP (108 MB file)")
    grey16 = Image.fromarray(np.full((6000, 6000), 40000, np.uint16))
    save("grey16_6000x6000.png", grey16, "PNG", "16-bit greyscale PNG, 36 MP")
    frames = [Image.new("RGB", (6000, 6000), c).convert("P") for c in ("red", "blue", "green")]
    save(
        "animated_6000x6000.gif",
        frames[0],
        "GIF",
        "GIF, 5 frames of 36 MP",
        save_all=True,
        append_images=frames[1:] * 2,
    )
    (folder / "frame_bomb.gif").write_bytes(gif_frame_bomb(12000, 12000))
    images["frame_bomb.gif"] = (
        folder / "frame_bomb.gif",
        "GIF: 16x16 screen, one 12000x12000 frame (107 KB)",
    )
    photo = smooth(7745, 5164)
    save("photo_7745x5164.png", photo, "PNG", "PNG at the limit: 40 MP, 3:2")
    del photo
    save("photo_8944x4472.png", smooth(8944, 4472), "PNG", "PNG at the limit: 40 MP, 2:1")
    photo = smooth(7360, 4912)
    save("baseline_7360x4912.jpg", photo, "JPEG", "JPEG 36 MP, baseline 4:2:0", quality=90)
    save(
        "progressive420_7360x4912.jpg",
        photo,
        "JPEG",
        "JPEG 36 MP, progressive 4:2:0",
        quality=90,
        progressive=True,
    )
    save(
        "progressive444_7360x4912.jpg",
        photo,
        "JPEG",
        "JPEG 36 MP, progressive 4:4:4 (the exception)",
        quality=90,
        progressive=True,
        subsampling=0,
    )
    del photo
    save(
        "wide_24000x1666.jpg",
        smooth(24000, 1666),
        "JPEG",
        "JPEG 40 MP, 14:1 (no DCT scaling: shorter side < 4 x 2 x 224)",
        quality=90,
    )
    save("wide_16000x2500.png", smooth(16000, 2500), "PNG", "PNG 40 MP panorama, 6.4:1")
    save("wide_40000x1000.png", Image.new("RGB", (40000, 1000), (9, 99, 199)), "PNG", "PNG 40:1")
    save("strip_400000x100.png", Image.new("RGB", (400000, 100), (9, 99, 199)), "PNG", "4000:1")
    return images


# (image, input size) pairs measured; 299 is Inception's and Xception's input size.
CASES = [
    ("flat_6000x6000.png", 224),
    ("photo_7745x5164.png", 224),
    ("photo_7745x5164.png", 299),
    ("photo_8944x4472.png", 224),
    ("photo_8944x4472.png", 299),
    ("wide_16000x2500.png", 224),
    ("wide_16000x2500.png", 299),
    ("wide_40000x1000.png", 224),
    ("strip_400000x100.png", 224),
    ("grey16_6000x6000.png", 224),
    ("baseline_7360x4912.jpg", 224),
    ("progressive420_7360x4912.jpg", 224),
    ("progressive444_7360x4912.jpg", 224),
    ("wide_24000x1666.jpg", 224),
    ("animated_6000x6000.gif", 224),
    ("frame_bomb.gif", 224),
    ("palette_6000x6000.bmp", 224),
    ("rgb_6000x6000.bmp", 224),
]
EXCEPTION = "progressive444_7360x4912.jpg"
# Also measured in the center_crop resize mode: a 36 MP PNG, a long one (bands), a large JPEG.
CROP_CASES = ("flat_6000x6000.png", "wide_16000x2500.png", "baseline_7360x4912.jpg")


def _limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def measure(tree: Path, image: Path, size: int, mode: str = "squash") -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(image), str(size), mode],
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
        preexec_fn=_limit_address_space,
        timeout=600,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"raise_mb": None, "outcome": f"failed (exit {done.returncode}): {tail[:160]}"}
    return json.loads(lines[-1])


def before_tree(ref: str, folder: Path) -> Path | None:
    """The project as of `ref`, unpacked from git (no worktree is registered)."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"no 'before' figures: git archive {ref} failed ({exc})")
        return None
    folder.mkdir()
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def real_photos() -> dict[str, bytes]:
    """The real photographs that ship inside installed packages, as JPEG bytes."""
    import skimage
    import sklearn
    from PIL import Image

    found = {}
    skimage_data = Path(skimage.__file__).parent / "data"
    sklearn_images = Path(sklearn.__file__).parent / "datasets" / "images"
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png"]
    names += ["hubble_deep_field.jpg", "retina.jpg", "ihc.png"]
    paths = [skimage_data / n for n in names] + sorted(sklearn_images.glob("*.jpg"))
    for path in paths:
        if not path.exists():
            continue
        if path.suffix == ".jpg":
            found[path.name] = path.read_bytes()
        else:
            buf = io.BytesIO()
            Image.open(path).convert("RGB").save(buf, "JPEG", quality=90)
            found[path.name] = buf.getvalue()
    return found


def jpeg_scaling_scores() -> tuple[dict, dict]:
    """Version 2 vs version 1 pixels and ImageNet scores on real photos, each at the input sizes
    that put it in the regime of each DCT ratio (the largest size at which that ratio is used):
    the photos that ship here are 427-1411 pixels, so the sizes are small; the ratio between
    photo and input, which is what the rule depends on, is that of a 12-36 MP photo at 224."""
    import numpy as np
    import tensorflow as tf

    from export.model.backbones import BackboneConfig
    from export.model.preprocessing import (
        JPEG_RATIOS,
        JPEG_SCALE_MARGIN,
        NORMALIZATIONS,
        Preprocessor,
        decode_image,
    )
    from export.pretrained.efficientnet_lite import EfficientNetLite0

    models, rows = {}, []
    for name, data in real_photos().items():
        shorter = min(decode_image(data).shape[:2])
        for ratio in JPEG_RATIOS[1:]:
            size = min(224, shorter // (JPEG_SCALE_MARGIN * ratio))
            if size < 32:
                continue
            if size not in models:
                models[size] = EfficientNetLite0(
                    include_top=True, weights="imagenet", input_shape=(size, size, 3)
                )
            config = BackboneConfig("efficientnet_lite0", weights="none", image_size=size)
            new = Preprocessor(config)(tf.constant(data)).numpy()
            full = tf.cast(decode_image(data), tf.float32)
            old = NORMALIZATIONS["lite"][1](
                tf.image.resize(full, [size, size], antialias=True)
            ).numpy()
            p_old, p_new = np.asarray(models[size].predict_on_batch(np.stack([old, new])))
            rows.append(
                {
                    "photo": name,
                    "ratio": ratio,
                    "size": size,
                    "pixels_mean_abs": round(float(np.abs(new - old).mean() * 128), 2),
                    "pixels_max_abs": round(float(np.abs(new - old).max() * 128), 1),
                    "max_score_diff": round(float(np.abs(p_old - p_new).max()), 4),
                    "top1_same": bool(p_old.argmax() == p_new.argmax()),
                }
            )
    figures = {
        "jpeg_scaling_max_score_diff": max(r["max_score_diff"] for r in rows),
        "jpeg_scaling_top1_agreement": sum(r["top1_same"] for r in rows) / len(rows),
    }
    details = {
        "jpeg_scaling_cases": len(rows),
        "jpeg_scaling_mean_max_score_diff": round(
            sum(r["max_score_diff"] for r in rows) / len(rows), 4
        ),
        "jpeg_scaling_pixels_mean_abs_grey_levels": round(
            sum(r["pixels_mean_abs"] for r in rows) / len(rows), 2
        ),
        "jpeg_scaling_rows": rows,
    }
    return figures, details


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="git ref of the 'before' figures")
    parser.add_argument("--no-before", action="store_true", help="after figures only")
    parser.add_argument("--no-scores", action="store_true", help="skip the JPEG-scaling scores")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="xfer-memory-bench-") as scratch:
        scratch = Path(scratch)
        (scratch / "images").mkdir()
        images = make_images(scratch / "images")
        old = None if args.no_before else before_tree(args.before, scratch / "before")
        details: dict = {"before_ref": None if old is None else args.before}
        rows = {}
        for name, size in CASES:
            path, what = images[name]
            key = f"{name}@{size}"
            after = measure(ROOT, path, size)
            row = {"what": what, "after": after}
            if old is not None:
                row["before"] = measure(old, path, size)
            rows[key] = row
            before_mb = row.get("before", {}).get("raise_mb")
            print(f"  {key:36s} after {after['raise_mb']!s:>7} MB  before {before_mb!s:>7} MB")
        # The center_crop resize mode resamples the same decoded image: the same memory.
        for name in CROP_CASES:
            rows[f"{name}@224 center_crop"] = {
                "what": images[name][1],
                "after": measure(ROOT, images[name][0], 224, "center_crop"),
            }
            print(f"  {name + '@224 center_crop':36s} after "
                  f"{rows[f'{name}@224 center_crop']['after']['raise_mb']!s:>7} MB")  # fmt: skip
    counted = [r["after"]["raise_mb"] for k, r in rows.items() if not k.startswith(EXCEPTION)]
    figures = {
        "preprocess_rss_raise_png36_mb": rows["flat_6000x6000.png@224"]["after"]["raise_mb"],
        "preprocess_rss_raise_max_mb": max(x for x in counted if x is not None),
        "preprocess_rss_raise_png36_center_crop_mb": rows["flat_6000x6000.png@224 center_crop"][
            "after"
        ]["raise_mb"],
    }
    details.update(
        {
            "goal_mb": GOAL_MB,
            "preprocess_rss_raise_png36_before_mb": rows["flat_6000x6000.png@224"]
            .get("before", {})
            .get("raise_mb"),
            "exception_progressive_444_mb": rows[f"{EXCEPTION}@224"]["after"]["raise_mb"],
            "images": rows,
        }
    )
    if not args.no_scores:
        scores, score_details = jpeg_scaling_scores()
        figures.update(scores)
        details.update(score_details)
    record("memory", figures, details)


if __name__ == "__main__":
    main()
