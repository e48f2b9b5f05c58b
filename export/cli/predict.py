"""`xfer-predict`: top-k labels for images from a published version, loaded in process.

One line per image on stdout: `IMAGE: label score, ...`, or with --json
`{"uri", "version", "top": [[label, score], ...], ...}` (with `ood_score`, `is_ood` for a model
that has them); a failed image gets `IMAGE: error: REASON`
(`{"uri", "error"}`) and the others are still predicted.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from export.cliargs import REQUIRED, opt, parse, setup_logging, usage_error
from export.publishing.versions import resolve_version

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED = 0, 2, 3
EXIT_CODES = {
    EXIT_OK: "every image predicted",
    EXIT_USAGE: "usage error (bad flags, no such model or version)",
    EXIT_SOME_FAILED: "some images failed (each has an error line)",
}
log = logging.getLogger("xfer-predict")


@dataclass(frozen=True, kw_only=True)
class PredictArgs:
    model_dir: str = opt(
        REQUIRED, "model base path (uses the highest version) or a version directory"
    )
    version: int | None = opt(None, "this version of the model base path")
    top_k: int = opt(5, "labels per image")
    json: bool = opt(False, "one JSON object per line")
    images: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="IMAGE")] = opt(
        (), "image files (at least one)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(
        PredictArgs,
        argv,
        prog="xfer-predict",
        description=__doc__,
        exit_codes=EXIT_CODES,
        config=(tyro.conf.FlagCreatePairsOff,),
    )
    if not args.images:
        usage_error("xfer-predict", "at least one IMAGE is required")
    setup_logging()

    try:
        version_dir = resolve_version(Path(args.model_dir), args.version)
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return EXIT_USAGE

    import tensorflow as tf

    from export.contract import INPUT_KEY, IS_OOD, OOD_OUTPUTS, OOD_SCORE, SERVING_DEFAULT
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
            out = serve(**{INPUT_KEY: tf.constant([data])})
            scores = out["scores"].numpy()[0]
        except OSError as exc:
            reason = f"unreadable: {exc.strerror or exc}"
        except tf.errors.InvalidArgumentError as exc:
            reason = error_reason(exc)
        else:
            order = scores.argsort()[::-1][:k]
            top = [[labels[i], round(float(scores[i]), 6)] for i in order]
            if args.json:
                number = int(version_dir.name) if version_dir.name.isdigit() else None
                # `labels`, `scores`, `model_version` as in xfer-score's rows; `top` and
                # `version` kept for the scripts that read them.
                row = {"uri": image, "version": number, "top": top}
                row.update(labels=[n for n, _ in top], scores=[s for _, s in top])
                row["model_version"] = number
                if all(o in out for o in OOD_OUTPUTS):  # a model with an OOD detector
                    row[OOD_SCORE] = round(float(out[OOD_SCORE].numpy()[0]), 6)
                    row[IS_OOD] = bool(out[IS_OOD].numpy()[0])
                print(json.dumps(row))
            else:
                ood = " (out of distribution)" if IS_OOD in out and out[IS_OOD].numpy()[0] else ""
                line = ", ".join(f"{name} {score:.4f}" for name, score in top)
                print(f"{image}: {line}{ood}")
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
