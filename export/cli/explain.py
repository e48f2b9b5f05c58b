"""`xfer-explain --run-dir RUN IMAGE...`: Grad-CAM heatmaps of a trained run's classifier.

For each image: `<output>/<image stem>_gradcam.png` (the image with a jet heatmap at alpha 0.4)
and one JSON line on stdout (also appended to `<output>/explain.jsonl`) with the predicted label,
its score, the explained class and the heatmap's peak in original-image pixels.

A failed image gets an error line on stderr and `{"image", "error"}` on stdout; the others are
still explained.
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

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_CODES = {
    EXIT_OK: "every image explained",
    EXIT_SOME_FAILED: "some images failed (each has an error line; the others are explained)",
    EXIT_USAGE: "usage error (bad flags, run dir, layer or class)",
}
log = logging.getLogger("xfer-explain")


@dataclass(frozen=True, kw_only=True)
class ExplainArgs:
    run_dir: str = opt(REQUIRED, "an xfer-train run dir")
    layer: str | None = opt(
        None, "spatial layer of the backbone (default: the last one before the feature pooling)"
    )
    label: Annotated[str | None, tyro.conf.arg(name="class", metavar="LABEL")] = opt(
        None, "explain this class instead of each image's predicted class"
    )
    output: str = opt("gradcam", "overlay directory")
    images: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="IMAGE")] = opt(
        (), "image files (at least one)"
    )


def _overlay_names(images: list[str]) -> list[str]:
    """`<stem>_gradcam.png`, numbered when two inputs share a stem."""
    seen: dict[str, int] = {}
    names = []
    for image in images:
        stem = Path(image).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        suffix = "" if seen[stem] == 1 else f"_{seen[stem]}"
        names.append(f"{stem}{suffix}_gradcam.png")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse(ExplainArgs, argv, prog="xfer-explain", description=__doc__, exit_codes=EXIT_CODES)
    if not args.images:
        usage_error("xfer-explain", "at least one IMAGE is required")
    setup_logging()
    from export import fsutil
    from export.experiments.gradcam import ExplainError, load_run, png_bytes

    try:
        model = load_run(args.run_dir)
        explainer = model.explainer(args.layer)
        class_id = explainer.class_id(args.label)
    except (ExplainError, FileNotFoundError, ValueError) as exc:
        print(f"xfer-explain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    lines, failed = [], 0
    for image, name in zip(args.images, _overlay_names(args.images)):
        try:
            contents = Path(image).read_bytes()
            explanation = explainer.explain(contents, class_id)
        except OSError as exc:
            reason = f"unreadable: {exc.strerror or exc}"
        except ValueError as exc:
            reason = str(exc)
        else:
            fsutil.atomic_write_bytes(output / name, png_bytes(explanation.overlay()))
            predicted = explanation.predicted_id
            x, y = explanation.peak
            row = {
                "image": image,
                "uri": image,  # the name every other command's rows use
                "label": model.labels[predicted],
                "score": round(float(explanation.probabilities[predicted]), 6),
                "explained": model.labels[explanation.class_id],
                "peak": {"x": x, "y": y},
                "layer": explainer.gradcam.layer,
                "overlay": str(output / name),
            }
            lines.append(json.dumps(row))
            print(lines[-1], flush=True)
            continue
        failed += 1
        print(f"xfer-explain: {image}: {reason}", file=sys.stderr, flush=True)
        lines.append(json.dumps({"image": image, "uri": image, "error": reason}))
        print(lines[-1], flush=True)
    fsutil.atomic_write_text(output / "explain.jsonl", "\n".join(lines) + "\n")
    return EXIT_SOME_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
