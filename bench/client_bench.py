"""The batch client end to end vs the same SavedModel in process, on the same images.

client_e2e_vs_inprocess  xfer-score images/s (read files, gRPC to the local server, write JSONL)
                         / in-process images/s of the same SavedModel (batches of 16)
client_rss_10x_vs_1x     the client's peak RSS scoring a 10x longer input list / the 1x list
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from beam_bench import make_images  # noqa: E402
from common import peak_rss_mb, record  # noqa: E402
from serving_bench import LIGHT_MODEL, export, in_process, start_server  # noqa: E402

IMAGES = 2000
BATCH = 16  # the server's max_batch_size (serving_bench.MAX_BATCH)


def write_list(path: Path, files: list[Path], repeat: int) -> Path:
    with open(path, "w") as f:
        f.write("uri,label\n")
        for _ in range(repeat):
            for p in files:
                f.write(f"{p},{p.parent.name}\n")
    return path


def child(argv: list[str]) -> None:
    """Runs xfer-score in a fresh interpreter, then reports its wall time and peak RSS."""
    from client.cli import main

    started = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - started
    rss = peak_rss_mb()
    print(json.dumps({"code": code, "seconds": seconds, "peak_rss_mb": rss}))


def score(listing: Path, port: int, output: Path, model: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(listing),
        "--target",
        f"127.0.0.1:{port}",
        "--model-name",
        model,
        "--output",
        str(output),
        "--quiet",
        "--batch-size",
        str(BATCH),
        "--concurrency",
        "4",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = output.read_text().count("\n")
    result["rows"] = rows
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    with tempfile.TemporaryDirectory(prefix="xfer-bench-client-") as tmp:
        tmp = Path(tmp)
        images = make_images(tmp / "digits", 2)  # 3,594 distinct files
        files = sorted(images.rglob("*.png"))[:IMAGES]
        training = make_images(tmp / "train", 1)  # the models only need to exist and be real
        demo_dir = export(training, tmp / "models" / "demo")
        light_dir = export(training, tmp / "models" / "light", LIGHT_MODEL)
        one = write_list(tmp / "x1.csv", files, 1)
        ten = write_list(tmp / "x10.csv", files, 10)
        models = {"demo": demo_dir.parent, "light": light_dir.parent}
        proc, port = start_server(demo_dir.parent, tmp, models)
        try:
            score(one, port, tmp / "warm.jsonl", "demo")  # connections, warm: not measured
            run_1x = score(one, port, tmp / "x1.jsonl", "demo")
            rss_1x = score(one, port, tmp / "r1.jsonl", "light")
            rss_10x = score(ten, port, tmp / "r10.jsonl", "light")
        finally:
            proc.terminate()
            proc.wait(30)
        local_rate = in_process(demo_dir, [p.read_bytes() for p in files])
    client_rate = run_1x["rows"] / run_1x["seconds"]
    record(
        f"client (xfer-score over gRPC to the local server, batch {BATCH}, concurrency 4)",
        {
            "client_e2e_vs_inprocess": client_rate / local_rate,
            "client_rss_10x_vs_1x": rss_10x["peak_rss_mb"] / rss_1x["peak_rss_mb"],
        },
        {
            "images": run_1x["rows"],
            "inprocess_images_per_s": local_rate,
            "client_images_per_s": client_rate,
            "client_peak_rss_mb_1x": rss_1x["peak_rss_mb"],
            "client_peak_rss_mb_10x": rss_10x["peak_rss_mb"],
            "rows_10x": rss_10x["rows"],
        },
    )


if __name__ == "__main__":
    main()
