"""Shared bench plumbing: results merged into bench-results.json, printed as a table."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

RESULTS = Path(os.environ.get("XFER_BENCH_RESULTS", "bench-results.json"))


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that across
    fork and exec, so a child started by a big parent would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def record(section: str, figures: dict, details: dict) -> dict:
    """Merge this run's ratios (top-level keys) and details into bench-results.json."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data.update(figures)
    data.setdefault("details", {})[section] = details
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(RESULTS)
    width = max(len(k) for k in [*figures, *details])
    print(f"\n{section}")
    for key, value in {**figures, **details}.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
    return data
