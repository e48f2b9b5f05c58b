"""Server-side batching on the demo model: the tuned and the default batching.config against
batching off, on the local server, clients sending one image a request (gRPC).

  batching_tuned_vs_off_c1/_c8/_c32    images/s with the config `xfer-serving-configs --tune`
                                       writes (--p99-ms P99_MS) / batching off, at 1, 8, 32 clients
  batching_default_vs_off_c4/_c8/_c32  the same for what xfer-serving-configs writes by default
  batching_padding_fraction_tuned / _default   padded rows / processed rows over the runs (the
                                       server's :xfer:serving:batching_session:padding_fraction)
Details: the same for the repository's previous default (max 32, timeout 2 ms, 4 threads,
allowed sizes 8/16/32), server CPU ms per image, latencies, the tuned parameters.
The four servers (off, default, tuned, previous) run side by side and take turns, a few
seconds each, at each concurrency; each figure is the median over the rounds of the ratio
measured within one round, so a load that comes and goes on a shared machine hits all alike.

python bench/batching_bench.py [--model-base models/digits] [--rounds 3]
(without --model-base the demo's EfficientNet-Lite0 is exported first, as serving_bench does).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from beam_bench import make_images  # noqa: E402
from common import record  # noqa: E402
from serving_bench import MODEL, export, free_port  # noqa: E402

from serving.deploy_configs import main as serving_configs  # noqa: E402
from serving.loadgen import LoadClient, LoadError, LoadTarget  # noqa: E402

CONCURRENCIES = (1, 4, 8, 32)
P99_MS = 500.0
SECONDS = 3.0  # per measured point
PREVIOUS_DEFAULT = (
    "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\n"
    "max_enqueued_batches { value: 100 }\nnum_batch_threads { value: 4 }\n"
    "allowed_batch_sizes: 8\nallowed_batch_sizes: 16\nallowed_batch_sizes: 32\n"
)
METRICS = "/monitoring/prometheus/metrics"


def start(base: Path, batching: Path | None, tmp: Path):
    """The local server (batching off when `batching` is None); (process, gRPC port, REST port)."""
    grpc_port, rest_port = free_port(), free_port()
    monitoring = tmp / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true, path: "{METRICS}" }}\n')
    args = [
        sys.executable,
        "-m",
        "serving",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        "--host=127.0.0.1",
        f"--model_name={MODEL}",
        f"--model_base_path={base}",
        "--file_system_poll_wait_seconds=0",
        f"--monitoring_config_file={monitoring}",
    ]
    if batching is not None:
        args += ["--enable_batching", f"--batching_parameters_file={batching}"]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(Path(__file__).parents[1])),
    )
    return proc, grpc_port, rest_port


def connect(port: int, proc, deadline: float = 300.0) -> LoadClient:
    until = time.monotonic() + deadline
    while True:
        try:
            return LoadClient(LoadTarget(f"127.0.0.1:{port}", MODEL))
        except LoadError:
            if proc.poll() is not None or time.monotonic() > until:
                raise
            time.sleep(0.5)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def padding_fraction(rest_port: int) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{rest_port}{METRICS}").read().decode()
    for line in text.splitlines():
        if line.startswith(":xfer:serving:batching_session:padding_fraction"):
            return float(line.split()[-1])
    return None


class Server:
    """One local server and a client to it; `point()` measures one concurrency."""

    def __init__(self, base: Path, batching: Path | None, tmp: Path):
        self.proc, self.grpc_port, self.rest_port = start(base, batching, tmp)
        self.client: LoadClient | None = None

    def connect(self) -> None:
        self.client = connect(self.grpc_port, self.proc)

    def point(self, payloads: list[bytes], clients: int, seconds: float) -> dict:
        before = cpu_seconds(self.proc.pid)
        point = self.client.measure(payloads, 1, clients, seconds)
        images = point.images_per_s * point.seconds + clients  # + each client's unmeasured first
        return {
            "images_per_s": point.images_per_s,
            "p50_ms": point.p50_ms,
            "p99_ms": point.p99_ms,
            "cpu_ms_per_image": (cpu_seconds(self.proc.pid) - before) * 1000 / images,
        }

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.proc.terminate()
        self.proc.wait(60)


def tune(server: Server, images: Path, out: Path) -> None:
    """xfer-serving-configs --tune against the model served with batching off."""
    args = ["--model-name", MODEL, "--out", str(out), "--tune"]
    args += ["--target", f"127.0.0.1:{server.grpc_port}", "--images", str(images)]
    if serving_configs([*args, "--p99-ms", str(P99_MS)]) != 0:
        raise RuntimeError(f"xfer-serving-configs --tune found no config within {P99_MS} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-base", help="a published model base path (default: export)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=SECONDS, help="per measured point")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xfer-bench-batching-") as tmp:
        tmp = Path(tmp)
        images = make_images(tmp / "digits", 1)
        payloads = [p.read_bytes() for p in sorted(images.rglob("*.png"))[:256]]
        if options.model_base:
            base = Path(options.model_base)
        else:
            base = export(images, tmp / "models" / MODEL).parent
        assert serving_configs(["--model-name", MODEL, "--out", str(tmp / "default")]) == 0
        (tmp / "previous.config").write_text(PREVIOUS_DEFAULT)
        servers = {"off": Server(base, None, tmp)}
        try:
            servers["off"].connect()
            tune(servers["off"], images, tmp / "tuned")
            configs = {
                "default": tmp / "default" / "batching.config",
                "tuned": tmp / "tuned" / "batching.config",
                "previous": tmp / "previous.config",
            }
            servers |= {name: Server(base, path, tmp) for name, path in configs.items()}
            for server in servers.values():
                server.connect()
            rounds = measure_rounds(servers, payloads, options.rounds, options.seconds)
            padding = {name: padding_fraction(s.rest_port) for name, s in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
        tuned_text = configs["tuned"].read_text()
    report(rounds, padding, tuned_text, options.seconds)


def measure_rounds(servers: dict[str, Server], payloads, rounds: int, seconds: float) -> list:
    """Every server at every concurrency, in turn, `rounds` times: the servers take turns within
    seconds of each other, so a load that comes and goes on the machine hits each alike. The
    order of the servers rotates from one round to the next."""
    names = list(servers)
    results = []
    for number in range(rounds):
        result: dict = {name: {} for name in names}
        for clients in CONCURRENCIES:
            turn = names[number % len(names) :] + names[: number % len(names)]
            for name in turn:
                result[name][clients] = servers[name].point(payloads, clients, seconds)
        print(f"round {number}: {result}", file=sys.stderr, flush=True)
        results.append(result)
    return results


def median(values) -> float:
    return float(np.median([v for v in values if v is not None]))


def report(rounds: list[dict], padding: dict, tuned_text: str, seconds: float) -> None:
    def ratio(name: str, clients: int) -> float:
        return median(
            r[name][clients]["images_per_s"] / r["off"][clients]["images_per_s"] for r in rounds
        )

    figures = {f"batching_tuned_vs_off_c{c}": ratio("tuned", c) for c in (1, 8, 32)}
    figures |= {f"batching_default_vs_off_c{c}": ratio("default", c) for c in (4, 8, 32)}
    figures["batching_padding_fraction_tuned"] = padding["tuned"]
    figures["batching_padding_fraction_default"] = padding["default"]
    details = {
        "rounds": len(rounds),
        "seconds_per_point": seconds,
        "tuned_config": " ".join(tuned_text.split()),
        "padding_fraction_previous_default": padding["previous"],
    }
    for name in ("off", "default", "tuned", "previous"):
        for c in CONCURRENCIES:
            for key in ("images_per_s", "p50_ms", "p99_ms", "cpu_ms_per_image"):
                details[f"{name}_c{c}_{key}"] = median(r[name][c][key] for r in rounds)
        if name != "off":
            for c in CONCURRENCIES:
                details[f"{name}_vs_off_c{c}"] = ratio(name, c)
    record(
        f"batching (EfficientNet-Lite0 224x224 + head, local server, gRPC, 1 image a request, "
        f"tuned for p99 {P99_MS:g} ms)",
        figures,
        details,
    )


if __name__ == "__main__":
    main()
