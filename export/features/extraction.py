"""Bottleneck features for a list of images, in process: read, preprocess, run the backbone.

A file that cannot be read or decoded is skipped with its reason; it never stops the run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from export.data.dataset import Example
from export.model.preprocessing import EagerPreprocessor, Preprocessor

log = logging.getLogger(__name__)


@dataclass
class FeatureTable:
    features: np.ndarray  # [N, D] float32, row i belongs to examples[i]
    examples: list[Example]
    sha256: list[str]
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}


class ImageError(NamedTuple):
    """In place of features for an image the contract refuses."""

    reason: str


class FeatureModel:
    """The backbone with the shared preprocessing in one traced graph: encoded bytes in.

    Decoding inside the batched graph runs a batch's images in parallel on TensorFlow's threads
    (map_fn), in the same call as the backbone, instead of one eager decode per image. A batch
    holding an image the contract refuses fails as a whole; it is then redone image by image, so
    each bad file gets its own reason and the rest of the batch its features. Used in process
    (training from images) and by the Beam job's model handler.
    """

    def __init__(self, extractor, preprocessor: Preprocessor):
        self.extractor = extractor
        self.preprocessor = preprocessor
        self._eager = EagerPreprocessor(preprocessor)
        self._from_bytes = tf.function(
            lambda contents: extractor(preprocessor.batch(contents), training=False),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )
        self._from_pixels = tf.function(
            lambda images: extractor(images, training=False),
            input_signature=[tf.TensorSpec([None, *preprocessor.output_spec.shape], tf.float32)],
        )

    @property
    def feature_dim(self) -> int:
        return int(self.extractor.output.shape[-1])

    def features_of_pixels(self, images: np.ndarray) -> np.ndarray:
        """Model inputs [N, S, S, 3] already preprocessed (e.g. augmented copies) -> features."""
        return self._from_pixels(images).numpy()

    def features(self, images: Sequence[bytes]) -> tuple[list, bool]:
        """(float32 features or ImageError per image, whether the batch was redone per image)."""
        if not images:
            return [], False
        try:
            return list(self._from_bytes(tf.constant(list(images))).numpy()), False
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError):
            pass
        decoded = [self._eager(image) for image in images]
        good = [pixels for pixels, reason in decoded if reason is None]
        computed = iter(self._from_pixels(np.stack(good)).numpy() if good else ())
        return [
            next(computed) if reason is None else ImageError(reason) for _, reason in decoded
        ], True


def _read(example: Example) -> tuple[bytes | None, str | None]:
    try:
        with open(example.path, "rb") as f:
            return f.read(), None
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"


def compute_features(
    examples: Sequence[Example],
    extractor,
    preprocessor: Preprocessor,
    *,
    batch_size: int = 32,
    workers: int = 4,
    progress: bool = True,
) -> FeatureTable:
    model = FeatureModel(extractor, preprocessor)
    rows: list[np.ndarray] = []
    kept: list[Example] = []
    hashes: list[str] = []
    skipped: list[dict] = []

    def skip(example: Example, reason: str) -> None:
        log.warning("skipped %s: %s", example.path, reason)
        skipped.append({"path": example.path, "reason": reason})

    bar = tqdm(total=len(examples), desc="features", unit="img", disable=not progress)
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    # Files are read in threads, a batch ahead of the model (I/O overlaps the backbone).
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reads = (pool.map(_read, batch) for batch in batches)
        pending = next(reads, None)
        for batch in batches:
            contents = list(pending)
            pending = next(reads, None)
            readable = []
            for example, (data, reason) in zip(batch, contents):
                if reason is None:
                    readable.append((example, data))
                else:
                    skip(example, reason)
            outputs, _ = model.features([data for _, data in readable])
            for (example, data), output in zip(readable, outputs):
                if isinstance(output, ImageError):
                    skip(example, output.reason)
                    continue
                rows.append(output)
                kept.append(example)
                hashes.append(hashlib.sha256(data).hexdigest())
            bar.update(len(batch))
    bar.close()
    features = (
        np.stack(rows).astype(np.float32, copy=False)
        if rows
        else np.zeros((0, model.feature_dim), np.float32)
    )
    return FeatureTable(features, kept, hashes, skipped)
