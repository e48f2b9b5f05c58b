"""Deadline drill: gRPC clients with a deadline the server cannot meet for all of them, against
the local server of this checkout and, with --before, of another (e.g. one that ignores
deadlines), taking turns.

    python bench/deadline_drill.py --model_base_path out/demo/models/digits \
        --images out/demo/digits --before /path/to/older/checkout --json deadline-drill.json

Each server (`python -m serving` of its checkout, started as bench/rest_drill.py does: free
ports, loopback, batching as the deployment has it unless --no_batching, Prometheus on) serves
the base path as it is. Per round and server: `--clients` threads, each with its own channel,
each sending one image per Predict with a `--deadline_ms` deadline for `--seconds`. Per server,
summed over the rounds: answers by status code, OK answers/s and their latency, the server's CPU
seconds (/proc/<pid>/stat), its model runs and batched rows (runtime_latency, processed_batch_size)
and its own request counts by status. The ratio `ok_per_cpu_s` after/before says how much more
of the server's CPU went into answers a client still read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(Path(__file__).parent), str(ROOT)]
from ops_drill import batching_flags, read_images  # noqa: E402
from ops_load import pct  # noqa: E402
from ops_requests import Target, channel, predict_request  # noqa: E402
from rest_drill import free_port, start_server  # noqa: E402

METRICS_PATH = "/monitoring/prometheus/metrics"
SAMPLE = re.compile(r"^([^\s{]+)(?:\{([^}]*)\})? (\S+)$")


def metrics(rest: str) -> dict[tuple[str, str], float]:
    """(name, labels) -> value from the server's Prometheus text."""
    with urllib.request.urlopen(rest + METRICS_PATH, timeout=30) as reply:
        text = reply.read().decode()
    found = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            found[(match[1], match[2] or "")] = float(match[3])
    return found


def server_figures(rest: str, pid: int) -> dict:
    """The server's counters now: CPU seconds, model runs, batched rows, requests by status."""
    values = metrics(rest)

    def total(name: str) -> float:
        return sum(v for (n, _), v in values.items() if n == name)

    by_status = Counter()
    for (name, labels), value in values.items():
        if name == ":tensorflow:serving:request_count_total":
            by_status[re.search(r'status="([^"]*)"', labels)[1]] += value
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return {
        "cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
        "model_runs": total(":tensorflow:serving:runtime_latency_count"),
        "batched_rows": total(":tensorflow:serving:batching_session:processed_batch_size_sum"),
        "requests": dict(by_status),
    }


def load(target: Target, clients: int, images: list[bytes], seconds: float, deadline: float):
    """Every call's (code, seconds) for `seconds` of `clients` closed-loop clients."""
    requests = [predict_request(target.model, [image]) for image in images]
    calls: list[tuple[str, float]] = []
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        with channel(target) as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            i = index
            while time.monotonic() < stop:
                start = time.monotonic()
                try:
                    stub.Predict(requests[i % len(requests)], timeout=deadline)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                calls.append((code, time.monotonic() - start))
                i += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return calls


def delta(after: dict, before: dict) -> dict:
    out = {k: round(after[k] - before[k], 2) for k in ("cpu_s", "model_runs", "batched_rows")}
    codes = set(after["requests"]) | set(before["requests"])
    out["requests"] = {
        c: after["requests"].get(c, 0) - before["requests"].get(c, 0)
        for c in sorted(codes)
        if after["requests"].get(c, 0) != before["requests"].get(c, 0)
    }
    return out


def summarise(calls: list[tuple[str, float]], server: list[dict], seconds: float) -> dict:
    ok = [s for code, s in calls if code == "OK"]
    cpu = sum(d["cpu_s"] for d in server)
    requests = Counter()
    for d in server:
        requests.update(d["requests"])
    return {
        "answers": dict(Counter(code for code, _ in calls)),
        "ok_per_s": round(len(ok) / seconds, 2),
        "ok_latency_ms": {"p50": pct(ok, 0.5), "p99": pct(ok, 0.99)},
        "server_cpu_s": round(cpu, 1),
        "ok_per_cpu_s": round(len(ok) / cpu, 3) if cpu else None,
        "model_runs": sum(d["model_runs"] for d in server),
        "batched_rows": sum(d["batched_rows"] for d in server),
        "server_requests": dict(requests),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_base_path", type=Path, default=ROOT / "out/demo/models/digits")
    parser.add_argument("--images", type=Path, help="a folder of images (default: one 96x96 PNG)")
    parser.add_argument("--before", type=Path, help="another checkout to run the same drill on")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--deadline_ms", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="per round and server")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no_batching", action="store_true", help="serve without batching")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    images = read_images(args.images)
    work = Path(tempfile.mkdtemp(prefix="xfer-deadline-drill-"))
    monitoring = work / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    extra = ["--file_system_poll_wait_seconds=0", f"--monitoring_config_file={monitoring}"]
    extra += [] if args.no_batching else batching_flags(work)
    checkouts = {"after": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    name = args.model_base_path.name
    servers: dict[str, tuple] = {}
    try:
        for label, root in checkouts.items():
            port = free_port()
            log = work / f"server-{label}.log"
            proc, rest = start_server(str(args.model_base_path), name, extra, log, port, root)
            target = Target(f"127.0.0.1:{port}", rest, name, args.model_base_path, proc.pid)
            load(target, 1, images[:1], 0.5, 120)  # one warm answer before the clock runs
            servers[label] = (proc, target)
        calls = {label: [] for label in servers}
        server = {label: [] for label in servers}
        for _ in range(args.rounds):
            for label, (proc, target) in servers.items():
                before = server_figures(target.rest, proc.pid)
                calls[label] += load(
                    target, args.clients, images, args.seconds, args.deadline_ms / 1000
                )
                time.sleep(2)  # the server's own count of requests still in flight settles
                server[label].append(delta(server_figures(target.rest, proc.pid), before))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    seconds = args.seconds * args.rounds
    results = {label: summarise(calls[label], server[label], seconds) for label in servers}
    results["settings"] = {
        "clients": args.clients,
        "deadline_ms": args.deadline_ms,
        "seconds": seconds,
        "batching": not args.no_batching,
        "checkouts": {k: str(v) for k, v in checkouts.items()},
        "load_average_at_end": os.getloadavg()[0],
    }
    if "before" in results and results["before"]["ok_per_cpu_s"]:
        after, before = results["after"], results["before"]
        results["ratios"] = {
            "ok_per_cpu_s": round(after["ok_per_cpu_s"] / before["ok_per_cpu_s"], 2),
            "ok_per_s": round(after["ok_per_s"] / max(before["ok_per_s"], 1e-9), 2),
        }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
