"""`xfer-predict`: top-k labels for images from a published version, loaded in process.

Exit codes: 0 every image predicted; 2 usage error (bad flags, no such model or version);
3 some images failed (each has an error line; the others are still predicted).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from export.cliargs import setup_logging
from export.publishing.versions import resolve_version

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED = 0, 2, 3
log = logging.getLogger("xfer-predict")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="xfer-predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model-dir",
        "--model_dir",
        required=True,
        help="model base path (uses the highest version) or a version directory",
    )
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--top-k", "--top_k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    args = parser.parse_args(argv)
    setup_logging()

    try:
        version_dir = resolve_version(Path(args.model_dir), args.version)
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return EXIT_USAGE

    import tensorflow as tf

    from export.contract import INPUT_KEY, SERVING_DEFAULT
    from export.model.preprocessing import error_reason

    model = tf.saved_model.load(str(version_dir))
    serve = model.signatures[SERVING_DEFAULT]
    labels_text = (version_dir / "assets" / "labels.txt").read_text(encoding="utf-8")
    labels = [line for line in labels_text.splitlines() if line]
    k = min(args.top_k, len(labels))
    failed = 0
    for image in args.images:
        try:
            data = Path(image).read_bytes()
            scores = serve(**{INPUT_KEY: tf.constant([data])})["scores"].numpy()[0]
        except OSError as exc:
            reason = f"unreadable: {exc.strerror or exc}"
        except tf.errors.InvalidArgumentError as exc:
            reason = error_reason(exc)
        else:
            order = scores.argsort()[::-1][:k]
            top = [[labels[i], round(float(scores[i]), 6)] for i in order]
            if args.json:
                print(
                    json.dumps(
                        {
                            "uri": image,
                            "version": int(version_dir.name)
                            if version_dir.name.isdigit()
                            else None,
                            "top": top,
                        }
                    )
                )
            else:
                print(f"{image}: " + ", ".join(f"{name} {score:.4f}" for name, score in top))
            continue
        failed += 1
        if args.json:
            print(json.dumps({"uri": image, "error": reason}))
        else:
            print(f"{image}: error: {reason}")
    sys.stdout.flush()
    return EXIT_SOME_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
