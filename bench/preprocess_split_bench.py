"""Where decode and resize run: on the server (raw bytes) or on the client (--preprocess client).

Per image, for the same photos scored by xfer-score through the local server (EfficientNet-Lite0
with its ImageNet head at 224, batching off, so that each request's cost is its own):

  server_cpu_pixels_vs_bytes   server CPU seconds per image, client-preprocessed ÷ raw bytes
  client_cpu_pixels_vs_bytes   client CPU seconds per image, the same ratio
  wire_bytes_pixels_vs_bytes   bytes of image payload per request image, the same ratio
  e2e_pixels_vs_bytes          images/s end to end (files → gRPC → JSONL), the same ratio

for 640×480 photos-like JPEGs (the GPU figures' size), and the same four as details for
3000×2000 JPEGs. CPU seconds per image are marginal: each run scores N and then 3N images in fresh
client processes, and the per-image figure is the difference ÷ 2N, so that a process's start-up
(importing TensorFlow, tracing the pixel step) is not counted per image. Server CPU is read from
/proc/<pid>/stat around each run. With two cores or more the server is pinned to the first and
the clients to the others (`--no-pin` to share them), so that the end-to-end ratio is that of a
client tier of its own rather than of two processes taking cores from each other.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import record  # noqa: E402
from serving_bench import free_port, wait_until_available  # noqa: E402

MODEL = "digits"  # the name serving_bench.wait_until_available asks for
BATCH = 16
SIZES = {"640x480": (640, 480), "3000x2000": (3000, 2000)}


def photo_like(width: int, height: int, seed: int) -> bytes:
    """A JPEG (quality 90) with a photo's spectrum: smooth gradients plus fine noise, so that its
    size on disk and its decode cost are a photo's, not a flat image's."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (height // 40 + 2, width // 40 + 2, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(image, np.int16) + rng.integers(-12, 13, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_photos(root: Path, size: tuple[int, int], count: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = root / f"{i:04d}.jpg"
        path.write_bytes(photo_like(*size, seed=i))
        paths.append(path)
    return paths


def server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cores(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server's cores, clients' cores): the first core and the rest, or None (unpinned)."""
    available = sorted(os.sched_getaffinity(0))
    if not pin or len(available) < 2:
        return None, None
    return {available[0]}, set(available[1:])


def pinned(cpus: set[int] | None):
    """A preexec_fn that confines the child to `cpus` (TensorFlow sizes its pools to them)."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def score(files: list[Path], port: int, out: Path, mode: str, cpus: set[int] | None = None) -> dict:
    """xfer-score over `files` in a fresh process: its wall time and CPU seconds."""
    folder = files[0].parent
    cmd = [
        sys.executable,
        "-m",
        "client",
        str(folder),
        "--target",
        f"127.0.0.1:{port}",
        "--model-name",
        MODEL,
        "--output",
        str(out),
        "--quiet",
        "--batch-size",
        str(BATCH),
        "--concurrency",
        "2",
        "--preprocess",
        mode,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        cmd, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), preexec_fn=pinned(cpus)
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    errors = [r for r in rows if r.get("error")]
    if errors:
        raise RuntimeError(f"{len(errors)} error rows, e.g. {errors[0]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "client_cpu": cpu, "rows": len(rows)}


def measure(
    server, port: int, files: list[Path], run_dir: Path, mode: str, n: int, cpus=None
) -> dict:
    """Marginal per-image costs from runs over n and 3n images."""
    runs = {}
    for count in (n, 3 * n):
        chosen = [files[i % len(files)] for i in range(count)]
        # A folder of its own per run, the same bytes under distinct names (hard links).
        links = []
        for i, path in enumerate(chosen):
            link = run_dir / f"{mode}-{count}" / f"{i:05d}.jpg"
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, link)
            links.append(link)
        cpu_before = server_cpu_seconds(server.pid)
        run = score(links, port, run_dir / f"{mode}-{count}.jsonl", mode, cpus)
        run["server_cpu"] = server_cpu_seconds(server.pid) - cpu_before
        runs[count] = run
    small, large = runs[n], runs[3 * n]
    extra = 2 * n
    return {
        "server_cpu_per_image": (large["server_cpu"] - small["server_cpu"]) / extra,
        "client_cpu_per_image": (large["client_cpu"] - small["client_cpu"]) / extra,
        "images_per_second": extra / (large["seconds"] - small["seconds"]),
        "client_start_cpu": small["client_cpu"]
        - n * (large["client_cpu"] - small["client_cpu"]) / extra,
    }


def publish(base: Path, images: Path) -> None:
    from export.publishing.exporter import ExportConfig, export_model

    export_model(
        ExportConfig(
            data=str(images),
            backbone="efficientnet_lite0",
            weights="imagenet",
            imagenet_head=True,
            model_name=MODEL,
            model_base_path=str(base),
            progress=False,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="N: runs score N and 3N images")
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="server and clients share the cores"
    )
    args = parser.parse_args()
    server_cpus, client_cpus = cores(args.pin)
    import grpc
    from tensorflow_serving.apis import model_service_pb2_grpc

    with tempfile.TemporaryDirectory(prefix="xfer-bench-split-") as name:
        tmp = Path(name)
        photos = {key: write_photos(tmp / key, size, 16) for key, size in SIZES.items()}
        gate_images = tmp / "gate"
        for label in ("a", "b"):
            for path in photos["640x480"][:4]:
                (gate_images / label).mkdir(parents=True, exist_ok=True)
                (gate_images / label / path.name).write_bytes(path.read_bytes())
        base = tmp / "models" / MODEL
        publish(base, gate_images)
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving",
                f"--port={port}",
                f"--model_name={MODEL}",
                f"--model_base_path={base}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
            preexec_fn=pinned(server_cpus),
        )
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            wait_until_available(model_service_pb2_grpc.ModelServiceStub(channel))
            results = {}
            for key, files in photos.items():
                for mode in ("server", "client"):
                    results[key, mode] = measure(
                        server, port, files, tmp / f"runs-{key}", mode, args.images, client_cpus
                    )
                    print(key, mode, results[key, mode], flush=True)
                results[key, "file_bytes"] = float(np.mean([p.stat().st_size for p in files]))
        finally:
            server.terminate()
            server.wait(timeout=60)
    pixel_bytes = 3 * 224 * 224

    def ratios(key: str) -> dict:
        raw, pix = results[key, "server"], results[key, "client"]
        return {
            "server_cpu_pixels_vs_bytes": pix["server_cpu_per_image"] / raw["server_cpu_per_image"],
            "client_cpu_pixels_vs_bytes": pix["client_cpu_per_image"] / raw["client_cpu_per_image"],
            "wire_bytes_pixels_vs_bytes": pixel_bytes / results[key, "file_bytes"],
            "e2e_pixels_vs_bytes": pix["images_per_second"] / raw["images_per_second"],
        }

    details = {}
    for key in SIZES:
        for mode in ("server", "client"):
            for figure, value in results[key, mode].items():
                details[f"{key}_{mode}_{figure}"] = value
        details[f"{key}_file_bytes"] = results[key, "file_bytes"]
    for figure, value in ratios("3000x2000").items():
        details[f"3000x2000_{figure}"] = value
    details["pixel_bytes"] = pixel_bytes
    details["server_cores"] = sorted(server_cpus) if server_cpus else "shared"
    details["client_cores"] = sorted(client_cpus) if client_cpus else "shared"
    record("preprocess_split", ratios("640x480"), details)


if __name__ == "__main__":
    main()
