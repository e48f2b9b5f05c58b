"""What the gRPC and REST transports share: the answer of one request (`Prediction`), the
rotation over targets, metadata headers and the pixel tensor of `--preprocess client`."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


def pick_target(targets: list, attempt: int, counter, batch: threading.local):
    """Round-robin over the targets for a batch's first attempt; each retry of that batch moves
    on to the next target after the one that failed. A batch's attempts run one after another in
    its thread, so its starting point lives in thread-local state. (Adding the attempt to a
    shared counter instead kept a batch on the same target of two on every retry: the counter
    and the attempt both advance by one, so a dead target among two was never routed around.)"""
    if attempt == 0 or not hasattr(batch, "start"):
        batch.start = next(counter)
    return targets[(batch.start + attempt) % len(targets)]


@dataclass
class Prediction:
    """Top-k labels (best first) and their scores for each image of a request."""

    labels: list[list[str]]
    scores: list[list[float]]
    model_version: int | None
    preprocessing: list[str] | None = None  # serving_pixels' contract, per image
    ood_score: list[float] | None = None  # per image, when the model has an OOD detector
    is_ood: list[bool] | None = None


def pixel_array(images: list[bytes], size: int) -> np.ndarray:
    """Pixel payloads (each 3 x S x S bytes, client/pixels.py) -> uint8 [N, S, S, 3]."""
    return np.frombuffer(b"".join(images), np.uint8).reshape(len(images), size, size, 3)


def shape_of(dims) -> list[int]:
    return [int(d["size"]) if isinstance(d, dict) else d.size for d in dims]


def parse_metadata(headers: list[str]) -> list[tuple[str, str]]:
    """`'authorization: Bearer X'` → `('authorization', 'Bearer X')` (gRPC keys are lowercase)."""
    pairs = []
    for header in headers:
        name, _, value = header.partition(":")
        pairs.append((name.strip().lower(), value.strip()))
    return pairs
