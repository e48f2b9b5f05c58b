"""`xfer-backbones`: list the backbone registry (one JSON object per backbone on stdout), or one
backbone's layers (for --feature-layer)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from export.cliargs import opt, parse, setup_logging


@dataclass(frozen=True, kw_only=True)
class BackbonesArgs:
    layers: str | None = opt(None, "print the layer names and output shapes of this backbone")
    image_size: int | None = opt(None, "with --layers: its input size (default: the registry's)")


def main(argv: list[str] | None = None) -> int:
    args = parse(BackbonesArgs, argv, prog="xfer-backbones", description=__doc__, exit_codes={})
    setup_logging()
    from export.model.backbones import (  # TensorFlow: after --help
        REGISTRY,
        WEIGHTS_NONE,
        BackboneConfig,
        build_feature_extractor,
        names,
    )

    if args.layers:
        config = BackboneConfig(name=args.layers, weights=WEIGHTS_NONE, image_size=args.image_size)
        try:
            extractor = build_feature_extractor(config)
        except ValueError as exc:  # unknown name (with close matches), bad size
            print(f"xfer-backbones: error: {exc}", file=sys.stderr)
            return 2
        for layer in extractor.layers:
            print(f"{layer.name}\t{tuple(layer.output.shape)}")
        return 0
    for name in names():
        spec = REGISTRY[name]
        print(
            json.dumps(
                {
                    "name": name,
                    "input_size": spec.input_size,
                    "feature_dim": spec.feature_dim,
                    "normalization": spec.normalization,
                    "weights": spec.weights_source,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
