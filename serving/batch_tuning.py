"""Choosing TF Serving's BatchingParameters from measured latency tables: the pure part of
`xfer-serving-configs --tune` (docs/serving.md#tune-batching-for-a-model).

The table is measured with batching off: requests of b images at concurrency k. With batching
on, a batch of b rows runs as one such request, and `num_batch_threads` = T batches run at once,
so point (b, T) is what a server with T batch threads costs per batch. The model of the batching
server follows TF Serving's SharedBatchScheduler (shared_batch_scheduler.h):

* A batch is formed when a batch thread is free: from the open batch, once it is full or its
  oldest task has waited `batch_timeout_micros`. While every thread is busy, arriving requests
  gather in the open batch. With c requests in flight (c clients, at most the server's
  `--grpc_max_threads`: each synchronous gRPC call holds a thread), c <= T run alone, as with
  batching off; otherwise they spread over the T running batches and the open one, about
  c / (T + 1) requests a batch, at most B = `max_batch_size` rows.
* A request waits at most max(timeout, one batch's run) before its batch starts, then runs with
  it: p99 ~ max(timeout, p99(b, T)) + p99(b, T), b the largest batch that can form (B, or
  every row in flight if fewer).
* Padding up to an `allowed_batch_sizes` entry runs the padded rows for nothing; the sizes are
  chosen so that padding costs at most `padding_tolerance` of a batch's time.

The choice: among the (B, T) whose p99 meets the target and that are predicted no slower than
batching off at any measured concurrency (within `slack`, the measurement's noise), the one of
highest throughput with the server full (c = in flight). Fewer batch threads than cores can be
more efficient per image yet leave cores idle when few requests are in flight; the second
condition is what rules that out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Point:
    """One measured load point: `concurrency` clients sending `batch` images a request."""

    batch: int
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    images_per_s: float


@dataclass(frozen=True)
class Choice:
    """The chosen parameters and what the table predicts for them."""

    max_batch_size: int  # rows a batch holds at most
    num_batch_threads: int
    batch_timeout_micros: int
    allowed_batch_sizes: tuple[int, ...]
    expected_batch: float  # rows a batch gathers with the server full
    predicted_images_per_s: float  # with the server full
    predicted_p99_ms: float
    unbatched_images_per_s: float  # batching off, the server full
    per_batch_ms: float  # the fitted fixed cost of one model run
    per_image_ms: float  # and of one more row
    vs_off: dict[int, float] = field(default_factory=dict)  # clients -> predicted / off


class TargetUnreachable(Exception):
    """No measured configuration meets the latency target."""


def table(points: list[Point]) -> dict[int, dict[int, Point]]:
    """concurrency -> batch -> point."""
    out: dict[int, dict[int, Point]] = {}
    for p in points:
        out.setdefault(p.concurrency, {})[p.batch] = p
    return out


def interpolate(by_batch: dict[int, Point], batch: float, field: str) -> float:
    """A point's `field` (p50_ms, p99_ms) at any batch size: linear between the measured sizes,
    extended along the last two beyond them."""
    sizes = sorted(by_batch)
    values = [getattr(by_batch[b], field) for b in sizes]
    if len(sizes) == 1:
        return values[0] * batch / sizes[0]
    if batch > sizes[-1]:
        slope = (values[-1] - values[-2]) / (sizes[-1] - sizes[-2])
        return values[-1] + slope * (batch - sizes[-1])
    return float(np.interp(batch, sizes, values))


def fit_costs(by_batch: dict[int, Point]) -> tuple[float, float]:
    """Least squares p50 = per_batch + per_image * b over the measured sizes (ms)."""
    sizes = np.array(sorted(by_batch), dtype=float)
    p50 = np.array([by_batch[int(b)].p50_ms for b in sizes])
    if len(sizes) < 2:
        return 0.0, float(p50[0] / sizes[0])
    per_image, per_batch = np.polyfit(sizes, p50, 1)
    return max(float(per_batch), 0.0), max(float(per_image), 0.0)


def allowed_sizes(latency, max_batch: int, tolerance: float) -> tuple[int, ...]:
    """The fewest batch sizes, ending at `max_batch`, such that a batch padded up to the next
    one takes at most (1 + tolerance) x its own time. () (no padding at all) when that needs
    more sizes than the powers of two up to `max_batch`: such a list no longer limits the
    shapes a model sees, which is all padding is for."""
    if max_batch == 1:
        return ()
    sizes = [max_batch]
    while sizes[-1] > 1:
        top = sizes[-1]
        # the smallest unpadded size that may still be padded up to `top`
        lowest = next(n for n in range(1, top + 1) if latency(top) <= (1 + tolerance) * latency(n))
        if lowest <= 1:
            break
        sizes.append(lowest - 1)
    return () if len(sizes) > max_batch.bit_length() else tuple(reversed(sizes))


def rate(row: dict[int, Point], threads: int, max_batch: int, rows_in_flight: float) -> float:
    """Images/s of T batch threads with `rows_in_flight` rows waiting or running."""
    rows = min(max_batch, rows_in_flight / (threads + 1))
    return threads * rows / interpolate(row, rows, "p50_ms") * 1000


def choose(
    points: list[Point],
    p99_ms: float,
    *,
    in_flight: int,
    request_images: int = 1,
    padding_tolerance: float = 0.1,
    slack: float = 0.05,
) -> Choice:
    """The batching parameters of highest modelled throughput within the p99 target, predicted
    no slower than batching off at any measured concurrency (see the module's docstring).

    `in_flight`: requests the server holds at once (its --grpc_max_threads); `request_images`:
    images per client request.

    The timeout only matters when a batch thread is idle: it holds a lone request back in the
    hope of company. That pays when a run is mostly fixed cost (fixed >= per-image cost: a
    second image nearly halves the cost of each); then the timeout is that fixed cost (waiting
    at most doubles a lone request's time), within the latency slack. Otherwise it is 0, as
    TF Serving's guide suggests to start with on CPUs."""
    by_threads = table(points)
    off = {  # batching off: clients -> images/s
        k: row[request_images].images_per_s
        for k, row in by_threads.items()
        if request_images in row and k <= in_flight
    }
    if in_flight not in off:
        raise TargetUnreachable(
            f"the table has no point for {request_images}-image requests at {in_flight} "
            "clients (batching off with the server full)"
        )
    candidates = []
    for threads, row in sorted(by_threads.items()):
        if threads >= in_flight:  # T >= in flight: every request runs alone, no batching
            continue
        costs = fit_costs(row)
        fixed = costs[0] if costs[0] >= costs[1] else 0.0
        for max_batch in sorted(row):
            # the largest batch that can form: every row in flight, at most B
            p99 = interpolate(row, min(max_batch, in_flight * request_images), "p99_ms")
            timeout_ms = min(fixed, max(p99_ms - 2 * p99, 0.0))
            vs_off = {
                k: 1.0 if k <= threads else rate(row, threads, max_batch, k * request_images) / v
                for k, v in sorted(off.items())
            }
            full = rate(row, threads, max_batch, in_flight * request_images)
            candidates.append(
                Choice(
                    max_batch_size=max_batch,
                    num_batch_threads=threads,
                    batch_timeout_micros=int(round(timeout_ms * 1000)),
                    allowed_batch_sizes=allowed_sizes(
                        lambda b, row=row: interpolate(row, b, "p50_ms"),
                        max_batch,
                        padding_tolerance,
                    ),
                    expected_batch=min(max_batch, in_flight * request_images / (threads + 1)),
                    predicted_images_per_s=full,
                    predicted_p99_ms=max(timeout_ms, p99) + p99,
                    unbatched_images_per_s=off[in_flight],
                    per_batch_ms=costs[0],
                    per_image_ms=costs[1],
                    vs_off=vs_off,
                )
            )
    within = [c for c in candidates if c.predicted_p99_ms <= p99_ms]
    if not within:
        closest = min(candidates, key=lambda c: c.predicted_p99_ms, default=None)
        if closest is None:
            raise TargetUnreachable(f"no measured point has fewer than {in_flight} batch threads")
        raise TargetUnreachable(
            f"no measured configuration meets p99 {p99_ms:g} ms: the lowest predicted p99 is "
            f"{closest.predicted_p99_ms:.0f} ms (batches of {closest.max_batch_size} images, "
            f"{closest.num_batch_threads} batch threads)"
        )
    safe = [c for c in within if min(c.vs_off.values()) >= 1 - slack]
    if not safe:  # every one is predicted slower somewhere: the least so
        worst = max(min(c.vs_off.values()) for c in within)
        safe = [c for c in within if min(c.vs_off.values()) == worst]
    # the fastest with the server full; of equals, the lower p99
    return max(safe, key=lambda c: (round(c.predicted_images_per_s, 6), -c.predicted_p99_ms))
