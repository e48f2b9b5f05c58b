"""matplotlib figures as PNGs (Agg canvas, no display), written atomically. Shared by
xfer-evaluate, xfer-compare-versions and xfer-drift."""

from __future__ import annotations

import io

from client.atomicfile import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg canvas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write(path, buffer.getvalue())
    pyplot().close(fig)
