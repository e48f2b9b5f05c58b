"""Bottleneck features for a list of images, in process: read, preprocess, run the backbone.

A file that cannot be read or decoded is skipped with its reason; it never stops the run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from export.dataset import Example
from export.preprocessing import EagerPreprocessor, Preprocessor

log = logging.getLogger(__name__)


@dataclass
class FeatureTable:
    features: np.ndarray  # [N, D] float32, row i belongs to examples[i]
    examples: list[Example]
    sha256: list[str]
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}


def _load(example: Example, preprocess: EagerPreprocessor):
    try:
        with open(example.path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return None, None, f"unreadable: {exc.strerror or exc}"
    image, reason = preprocess(data)
    return image, hashlib.sha256(data).hexdigest(), reason


def compute_features(
    examples: Sequence[Example],
    extractor,
    preprocessor: Preprocessor,
    *,
    batch_size: int = 32,
    workers: int = 4,
    progress: bool = True,
) -> FeatureTable:
    preprocess = EagerPreprocessor(preprocessor)
    dim = int(extractor.output.shape[-1])
    rows: list[np.ndarray] = []
    kept: list[Example] = []
    hashes: list[str] = []
    skipped: list[dict] = []
    pending_images: list[np.ndarray] = []
    pending_examples: list[tuple[Example, str]] = []

    def flush():
        if not pending_images:
            return
        batch = np.stack(pending_images)
        rows.append(np.asarray(extractor(batch, training=False), dtype=np.float32))
        for example, digest in pending_examples:
            kept.append(example)
            hashes.append(digest)
        pending_images.clear()
        pending_examples.clear()

    bar = tqdm(total=len(examples), desc="features", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(examples), batch_size * 4):
            chunk = examples[start : start + batch_size * 4]
            for example, (image, digest, reason) in zip(
                chunk, pool.map(lambda e: _load(e, preprocess), chunk)
            ):
                if reason is not None:
                    log.warning("skipped %s: %s", example.path, reason)
                    skipped.append({"path": example.path, "reason": reason})
                else:
                    pending_images.append(image)
                    pending_examples.append((example, digest))
                    if len(pending_images) == batch_size:
                        flush()
            bar.update(len(chunk))
    flush()
    bar.close()
    features = np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)
    return FeatureTable(features, kept, hashes, skipped)
