"""`xfer-sample-data digits OUT`: real data that ships with a PyPI package, as class folders.

scikit-learn bundles the UCI handwritten digits (1,797 scans of 8x8 pixels, 16 grey levels,
10 classes); they become OUT/<digit>/<index>.png. Each scan is upscaled with bicubic
interpolation into the middle 70% of a black square (white ink), so that an ImageNet backbone
sees a smooth stroke with a margin around it, as objects usually are in photos; this rendering
lifts EfficientNet-Lite0 features from ~94% to ~97% accuracy on the digits. The written folder
is printed on stdout.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import tyro

from export.cliargs import REQUIRED, opt, parse


@dataclass(frozen=True, kw_only=True)
class SampleDataArgs:
    dataset: tyro.conf.Positional[Literal["digits"]] = opt(REQUIRED, "the data set: digits")
    out: tyro.conf.Positional[str] = opt(REQUIRED, "folder to write the class folders into")
    size: int = opt(224, "side of the written PNGs")


def main(argv: list[str] | None = None) -> int:
    args = parse(SampleDataArgs, argv, prog="xfer-sample-data", description=__doc__, exit_codes={})
    from export.data.sample_data import write_digits  # scikit-learn: after --help

    print(write_digits(args.out, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
