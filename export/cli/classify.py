"""`xfer-classify`: the 1,000 ImageNet classes for images, with the pretrained EfficientNet-Lite0.

No training and no published model needed: `export.model.imagenet_classifier` (the registry's
`efficientnet_lite0` and its ImageNet classifier, through the shared preprocessing contract).

Exit codes: 0 every image classified; 2 usage error (bad flags, ImageNet weights unavailable);
3 some images failed (each has an error line; the others are still classified).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from export.cliargs import setup_logging

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED = 0, 2, 3
log = logging.getLogger("xfer-classify")


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
    from export.model.imagenet_classifier import ImageNetClassifier  # TensorFlow: after --help

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
