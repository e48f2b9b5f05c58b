"""`xfer-backbones`: list the backbone registry, or one backbone's layers (for --feature-layer)."""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xfer-backbones", description=__doc__)
    parser.add_argument("--layers", metavar="NAME", help="print the layer names of NAME")
    parser.add_argument("--image-size", type=int, default=None)
    args = parser.parse_args(argv)
    from export.model.backbones import (  # TensorFlow: after --help
        REGISTRY,
        WEIGHTS_NONE,
        BackboneConfig,
        build_feature_extractor,
        names,
    )

    if args.layers:
        config = BackboneConfig(name=args.layers, weights=WEIGHTS_NONE, image_size=args.image_size)
        extractor = build_feature_extractor(config)
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
