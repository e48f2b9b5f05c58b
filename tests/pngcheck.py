"""Checks that generated PNGs are real pictures, not empty or uniform canvases."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_pixels(data: bytes, min_colours: int = 50, min_side: int = 20) -> np.ndarray:
    """RGB pixels of a PNG that decodes, is not tiny and has at least `min_colours` colours."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert min(pixels.shape[:2]) >= min_side, f"PNG is only {pixels.shape[1]}x{pixels.shape[0]}"
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours >= min_colours, f"PNG has only {colours} distinct colours"
    assert pixels.std() > 5, "PNG is (nearly) uniform"
    return pixels


def has_colour(pixels: np.ndarray, hex_colour: str, tolerance: int = 30) -> bool:
    """Whether any pixel is within `tolerance` (per channel) of the colour."""
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(pixels.astype(int) - target).max(axis=-1) <= tolerance).any())
