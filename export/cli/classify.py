"""`xfer-classify`: the 1,000 ImageNet classes for images, with the pretrained EfficientNet-Lite0.

No training and no published model needed: `export.model.imagenet_classifier` (the registry's
`efficientnet_lite0` and its ImageNet classifier, through the shared preprocessing contract, by
default with the center crop the model was evaluated with).
Per image on stdout: its path and five `label score` lines, or with --json
`{"uri", "top5": [[label, score], ...]}`; a failed image gets `IMAGE: error: REASON`
(`{"uri", "error"}`) and the others are still classified.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from export.cliargs import opt, parse, setup_logging, usage_error
from export.model.resize_mode import (
    DEFAULT_CROP_PADDING,
    DEFAULT_INTERPOLATION,
    IMAGENET_DEFAULT,
    Interpolation,
    ResizeMode,
    ResizeName,
)

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED = 0, 2, 3
EXIT_CODES = {
    EXIT_OK: "every image classified",
    EXIT_USAGE: "usage error (bad flags, ImageNet weights unavailable)",
    EXIT_SOME_FAILED: "some images failed (each has an error line; the others are classified)",
}
log = logging.getLogger("xfer-classify")


@dataclass(frozen=True, kw_only=True)
class ClassifyArgs:
    json: bool = opt(False, "one JSON object per line")
    batch_size: int = opt(16, "images per model call")
    resize: ResizeName = opt(
        IMAGENET_DEFAULT,
        "center_crop (the ImageNet evaluation crop the model was measured with: aspect ratio "
        "kept, the central 224/256 of the shorter side) or squash (the whole image, aspect "
        "ratio not kept)",
    )
    crop_padding: int = opt(
        DEFAULT_CROP_PADDING, "center_crop: the shorter side is scaled to 224 + this"
    )
    crop_interpolation: Interpolation = opt(
        DEFAULT_INTERPOLATION, "center_crop: bicubic or bilinear (both antialiased)"
    )
    images: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="IMAGE")] = opt(
        (), "image files (at least one)"
    )


def _read(path: str) -> tuple[bytes | None, str | None]:
    try:
        return Path(path).read_bytes(), None
    except IsADirectoryError:
        return None, "unreadable: is a directory"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"


def main(argv: list[str] | None = None) -> int:
    args = parse(
        ClassifyArgs,
        argv,
        prog="xfer-classify",
        description=__doc__,
        exit_codes=EXIT_CODES,
        config=(tyro.conf.FlagCreatePairsOff,),
    )
    if not args.images:
        usage_error("xfer-classify", "at least one IMAGE is required")
    if args.batch_size < 1:
        usage_error("xfer-classify", f"--batch-size must be at least 1; received {args.batch_size}")
    setup_logging()
    from export.model.imagenet_classifier import ImageNetClassifier  # TensorFlow: after --help

    try:
        resize = ResizeMode(args.resize, args.crop_padding, args.crop_interpolation)
        classifier = ImageNetClassifier(batch_size=args.batch_size, resize=resize)
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
            # `labels` and `scores` as in xfer-score's rows, beside the original `top5`
            labels, scores = [n for n, _ in top], [s for _, s in top]
            print(json.dumps({"uri": uri, "top5": top, "labels": labels, "scores": scores}))
        else:
            print(uri)
            for name, score in top:
                print(f"  {name} {score:.4f}")
    sys.stdout.flush()
    return EXIT_SOME_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
