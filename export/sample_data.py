"""`xfer-sample-data digits OUT`: real data that ships with a PyPI package, as class folders.

scikit-learn bundles the UCI handwritten digits (1,797 scans of 8x8 pixels, 16 grey levels,
10 classes); they become OUT/<digit>/<index>.png, upscaled so that every backbone can read them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np


def write_digits(out: str | Path, size: int = 32) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    out = Path(out)
    if out.exists():
        return out
    digits = load_digits()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for index, (image, target) in enumerate(zip(digits.images, digits.target)):
            pixels = (255 - image * (255 / 16)).clip(0, 255).astype(np.uint8)  # dark ink on white
            folder = tmp / str(target)
            folder.mkdir(exist_ok=True)
            Image.fromarray(pixels).resize((size, size), Image.NEAREST).save(
                folder / f"{index:04d}.png"
            )
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xfer-sample-data", description=__doc__)
    parser.add_argument("dataset", choices=["digits"])
    parser.add_argument("out")
    parser.add_argument("--size", type=int, default=32, help="side of the written PNGs")
    args = parser.parse_args(argv)
    print(write_digits(args.out, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
