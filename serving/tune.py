"""`xfer-serving-configs --tune`: measure a running server, choose the batching parameters.

The server (xfer-serve or TensorFlow Serving, batching off) is sent requests of each batch size
at each concurrency (serving/loadgen.py); serving/batch_tuning.py picks the parameters from that
table; the table, the choice and a plot are written next to the config files, so a person can
see why those numbers were chosen.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from serving.batch_tuning import Choice, Point, TargetUnreachable, choose
from serving.loadgen import LoadClient, LoadTarget

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp"}
REPORT_JSON = "batching-tuning.json"
REPORT_PNG = "batching-tuning.png"


@dataclass(frozen=True)
class TuneConfig:
    target: str  # host:port of the server's gRPC API
    model_name: str
    images: str  # a folder of sample images, searched recursively
    p99_ms: float
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    concurrencies: tuple[int, ...] = (1, 2, 4)  # the num_batch_threads to try
    seconds: float = 2.0  # per measured point and round
    rounds: int = 3  # each point measured this many times, the median kept
    request_images: int = 1
    in_flight: int = 8  # the server's --grpc_max_threads
    padding_tolerance: float = 0.1
    signature_name: str = "serving_default"
    max_images: int = 256  # sample images read from `images`


def sample_images(folder: str, limit: int) -> list[bytes]:
    """Up to `limit` image files under `folder`, in name order."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{folder}: not a directory of sample images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{folder}: no .jpg, .png, .gif or .bmp files to send")
    return [p.read_bytes() for p in files[:limit]]


def grid(config: TuneConfig) -> list[tuple[int, int]]:
    """(batch, concurrency) points: every batch size at each concurrency, and single requests
    at the server's in-flight limit (batching off at saturation, the baseline)."""
    sizes = sorted(set(config.batch_sizes))
    points = [(b, k) for k in sorted(set(config.concurrencies)) for b in sizes]
    if (config.request_images, config.in_flight) not in points:
        points.append((config.request_images, config.in_flight))
    return points


def measure(config: TuneConfig, payloads: list[bytes]) -> list[Point]:
    """The grid, `config.rounds` times over (each round in another order, so that a load
    coming and going on the machine spreads over every point), and per point the median."""
    from tqdm import tqdm

    client = LoadClient(LoadTarget(config.target, config.model_name, config.signature_name))
    todo = grid(config)
    measured: dict[tuple[int, int], list[Point]] = {key: [] for key in todo}
    try:
        payloads = client.usable(payloads)
        order = [(r, key) for r in range(config.rounds) for key in _rotated(todo, r)]
        with tqdm(order, desc="tuning", unit="point", disable=None) as bar:
            for number, (batch, concurrency) in bar:
                bar.set_postfix(batch=batch, concurrency=concurrency)
                point = client.measure(
                    payloads, batch, concurrency, config.seconds, warm=number == 0
                )
                measured[batch, concurrency].append(point)
    finally:
        client.close()
    points = [_median(runs) for runs in measured.values()]
    for p in points:
        log.info(
            "batch %d x %d clients: %.1f images/s, p50 %.1f ms, p99 %.1f ms",
            p.batch,
            p.concurrency,
            p.images_per_s,
            p.p50_ms,
            p.p99_ms,
        )
    return points


def _rotated(items: list, by: int) -> list:
    by %= len(items)
    return items[by:] + items[:by] if by % 2 == 0 else list(reversed(items[by:] + items[:by]))


def _median(runs: list[Point]) -> Point:
    """One point from several runs of it: the median of each figure."""
    import numpy as np

    def med(name: str) -> float:
        return float(np.median([getattr(p, name) for p in runs]))

    return Point(
        batch=runs[0].batch,
        concurrency=runs[0].concurrency,
        requests=sum(p.requests for p in runs),
        seconds=sum(p.seconds for p in runs),
        p50_ms=med("p50_ms"),
        p99_ms=med("p99_ms"),
        images_per_s=med("images_per_s"),
    )


def run(config: TuneConfig, out_dir: str | Path) -> Choice:
    """Measure, choose, write the report beside the configs. Raises
    batch_tuning.TargetUnreachable (after writing the measured table), ValueError for the
    sample images, loadgen.LoadError for the server."""
    points = measure(config, sample_images(config.images, config.max_images))
    try:
        choice = choose(
            points,
            config.p99_ms,
            in_flight=config.in_flight,
            request_images=config.request_images,
            padding_tolerance=config.padding_tolerance,
        )
    except TargetUnreachable:
        write_report(out_dir, config, points, None)
        raise
    write_report(out_dir, config, points, choice)
    return choice


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_report(
    out_dir: str | Path, config: TuneConfig, points: list[Point], choice: Choice | None
) -> list[Path]:
    """batching-tuning.json (what was measured and chosen) and batching-tuning.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "config": asdict(config),
        "points": [asdict(p) for p in points],
        "choice": None if choice is None else asdict(choice),
    }
    _atomic_write(out / REPORT_JSON, (json.dumps(report, indent=2) + "\n").encode())
    _atomic_write(out / REPORT_PNG, plot(points, config.p99_ms, choice))
    return [out / REPORT_JSON, out / REPORT_PNG]


def plot(points: list[Point], p99_ms: float, choice: Choice | None) -> bytes:
    """Images/s and p99 against batch size, one line per concurrency; the choice circled."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, tail) = plt.subplots(1, 2, figsize=(10, 4))
    for k in sorted({p.concurrency for p in points}):
        row = sorted((p for p in points if p.concurrency == k), key=lambda p: p.batch)
        sizes = [p.batch for p in row]
        rate.plot(sizes, [p.images_per_s for p in row], "o-", label=f"{k} at once")
        tail.plot(sizes, [p.p99_ms for p in row], "o-", label=f"{k} at once")
    tail.axhline(p99_ms / 2, color="grey", linestyle="--", label="half the p99 target")
    if choice is not None:
        chosen = [
            p
            for p in points
            if p.batch == choice.max_batch_size and p.concurrency == choice.num_batch_threads
        ]
        for p in chosen:
            rate.plot([p.batch], [p.images_per_s], "ko", markersize=12, fillstyle="none")
            tail.plot([p.batch], [p.p99_ms], "ko", markersize=12, fillstyle="none")
    for ax, label in ((rate, "images/s"), (tail, "p99 per request, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("images per request (batching off)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle("batching tuning: the server measured with batching off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
