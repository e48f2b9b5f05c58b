"""What a scoring run reports: its counts and a uniform sample of request latencies."""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field


class LatencyReservoir:
    """A uniform sample of request latencies (Vitter's algorithm R): percentiles in O(1) memory."""

    def __init__(self, capacity: int = 10000, seed: int = 0):
        self.capacity = capacity
        self.samples: list[float] = []
        self.count = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self.count += 1
            if len(self.samples) < self.capacity:
                self.samples.append(seconds)
            else:
                slot = self._rng.randrange(self.count)
                if slot < self.capacity:
                    self.samples[slot] = seconds

    def percentiles_ms(self) -> dict[str, float | None]:
        with self._lock:
            ordered = sorted(self.samples)
        if not ordered:
            return {"p50": None, "p95": None, "p99": None}

        def pick(q: float) -> float:
            index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
            return round(ordered[index] * 1000, 2)

        return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99)}


@dataclass
class Summary:
    total: int = 0
    scored: int = 0
    failed: int = 0
    skipped: int = 0  # already in the output (--resume)
    requests: int = 0
    retries: int = 0
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    latency_ms: dict = field(default_factory=dict)
    model_versions: dict = field(default_factory=dict)  # version (str) -> rows
    shadow: dict | None = None  # client.shadow.Shadow.as_dict(), with --shadow-version(-label)

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lat = self.latency_ms or {}
        versions = ", ".join(f"{v}: {n}" for v, n in sorted(self.model_versions.items())) or "-"
        return (
            f"total {self.total}  scored {self.scored}  failed {self.failed}"
            f"  skipped {self.skipped} (resume)\n"
            f"{self.images_per_s:.1f} images/s over {self.elapsed_s:.1f}s, {self.requests} requests"
            f" ({self.retries} retries); latency p50 {lat.get('p50')} ms, p95 {lat.get('p95')} ms,"
            f" p99 {lat.get('p99')} ms\nmodel versions: {versions}"
            + (self._shadow_line() if self.shadow else "")
        )

    def _shadow_line(self) -> str:
        s = self.shadow or {}
        agreement = "n/a" if s.get("agreement") is None else f"{s['agreement']:.4f}"
        versions = ", ".join(f"{v}: {n}" for v, n in sorted(s["model_versions"].items())) or "-"
        return (
            f"\nshadow: versions {versions}; top-1 agreement {agreement} over {s['compared']} "
            f"rows, {s['errors']} shadow errors"
        )
