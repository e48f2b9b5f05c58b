"""Generated images for tests: classes that a tiny random-weight backbone can tell apart."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def square_image(colour, size=48, rng=None, background=None) -> Image.Image:
    """A coloured square at a random position on a noisy grey background."""
    rng = rng or np.random.default_rng(0)
    bg = background if background is not None else rng.integers(90, 160)
    pixels = rng.normal(bg, 12, (size, size, 3)).clip(0, 255)
    side = int(rng.integers(size // 3, size // 2))
    y, x = rng.integers(0, size - side, 2)
    pixels[y : y + side, x : x + side] = np.asarray(colour) + rng.normal(0, 8, 3)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def write_shapes_dataset(
    root: Path, per_class: int = 30, size: int = 48, seed: int = 0, colours=COLOURS
) -> Path:
    """root/<colour>/img_<i>.{jpg,png}: alternating formats, one class per colour."""
    rng = np.random.default_rng(seed)
    for name, colour in colours.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = square_image(colour, size, rng)
            if i % 2:
                (folder / f"img_{i:03d}.png").write_bytes(encode(image, "PNG"))
            else:
                (folder / f"img_{i:03d}.jpg").write_bytes(encode(image, "JPEG", quality=90))
    return root
