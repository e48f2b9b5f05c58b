"""`xfer-sample-data digits OUT`: real data that ships with a PyPI package, as class folders.

scikit-learn bundles the UCI handwritten digits (1,797 scans of 8x8 pixels, 16 grey levels,
10 classes); they become OUT/<digit>/<index>.png. Each scan is upscaled with bicubic
interpolation into the middle 70% of a black square (white ink), so that an ImageNet backbone
sees a smooth stroke with a margin around it, as objects usually are in photos; this rendering
lifts EfficientNet-Lite0 features from ~94% to ~97% accuracy on the digits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from export import fsutil


def render_digit(scan: np.ndarray, size: int = 224, margin: float = 0.15):
    """A 0..16 scan -> PIL image: white ink, bicubic upscale, `margin` of black on each side."""
    from PIL import Image

    inner = round(size * (1 - 2 * margin))
    ink = Image.fromarray((scan * (255 / 16)).clip(0, 255).astype(np.uint8))
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(ink.resize((inner, inner), Image.BICUBIC), ((size - inner) // 2,) * 2)
    return canvas


def write_digits(out: str | Path, size: int = 224) -> Path:
    from sklearn.datasets import load_digits

    out = Path(out)
    if out.exists():
        return out
    digits = load_digits()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(fsutil.make_temp_dir(out.parent, prefix=f".{out.name}-"))
    try:
        for index, (image, target) in enumerate(zip(digits.images, digits.target)):
            folder = tmp / str(target)
            folder.mkdir(exist_ok=True)
            render_digit(image, size).save(folder / f"{index:04d}.png")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
