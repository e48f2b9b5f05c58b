"""`xfer-explain --run-dir RUN IMAGE...`: Grad-CAM heatmaps of a trained run's classifier.

For each image: `<output>/<image stem>_gradcam.png` (the image with a jet heatmap at alpha 0.4)
and one JSON line on stdout (also appended to `<output>/explain.jsonl`) with the predicted label,
its score, the explained class and the heatmap's peak in original-image pixels.

Exit codes: 0 every image explained; 1 some images failed (each has an error line naming the
file and the reason; the others are still explained); 2 usage error (bad run dir, layer, class).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from export.cliargs import setup_logging

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("xfer-explain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xfer-explain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run-dir", "--run_dir", required=True, help="an xfer-train run dir")
    parser.add_argument(
        "--layer",
        default=None,
        help="spatial layer of the backbone (default: the last one before the feature pooling)",
    )
    parser.add_argument(
        "--class",
        dest="label",
        default=None,
        metavar="LABEL",
        help="explain this class instead of each image's predicted class",
    )
    parser.add_argument("--output", default="gradcam", help="overlay directory (default: gradcam)")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    return parser


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
    args = build_parser().parse_args(argv)
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
        lines.append(json.dumps({"image": image, "error": reason}))
        print(lines[-1], flush=True)
    fsutil.atomic_write_text(output / "explain.jsonl", "\n".join(lines) + "\n")
    return EXIT_SOME_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
