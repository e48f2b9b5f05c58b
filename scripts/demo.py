"""`make demo`: the whole product on one laptop, offline, on real data.

  1. data         scikit-learn's handwritten digits as class folders of PNGs (or DATA=your folders)
  2. bottlenecks  the Beam job computes backbone features into TFRecords (DirectRunner)
  3. export v1    `make export BOTTLENECKS=...`: a head trained on the cached features, published
  4. serve        the local TF-Serving-compatible server on free ports
  5. score        the test split over gRPC with the batch client; accuracy, confusion matrix
  6. hot swap     v2 is published while scoring continues: model_version changes, 0 failures
  7. shadow       v1 (label stable) and v2 (label canary) answer the same images; what changed
Everything lands in OUT, listed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent
MODEL = "digits"
ACCURACY_GOAL = 0.95


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def versions_available(port: int) -> list[int]:
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                request, timeout=5
            )
        except grpc.RpcError:
            return []
    return sorted(v.version for v in status.model_version_status if v.state == v.AVAILABLE)


def wait_for_version(port: int, version: int, server: subprocess.Popen, timeout=600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited (code {server.returncode}); see server.log")
        if version in versions_available(port):
            return
        time.sleep(0.5)
    raise SystemExit(f"version {version} did not become available in {timeout}s")


def make_export(out: Path, backbone_args: dict, extra: str) -> dict:
    with open(out / "export.log", "a") as log:
        run(
            [
                "make",
                "--no-print-directory",
                "export",
                f"BOTTLENECKS={out / 'bottlenecks'}",
                f"MODEL_NAME={MODEL}",
                f"MODEL_BASE_PATH={out / 'models' / MODEL}",
                f"EPOCHS={backbone_args['epochs']}",
                f"EXPORT_ARGS={extra}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    versions = sorted(int(p.name) for p in (out / "models" / MODEL).iterdir() if p.name.isdigit())
    card = json.loads(
        (
            out / "models" / MODEL / str(versions[-1]) / "assets.extra" / "model_card.json"
        ).read_text()
    )
    return card


def score(out: Path, port: int, output: Path, *extra: str, listing: Path | None = None):
    """xfer-score over the test split, or `listing` (its progress bar and summary go to the
    console); the rows written."""
    run(
        [
            BIN / "xfer-score",
            listing or out / "test.csv",
            "--target",
            f"127.0.0.1:{port}",
            "--model-name",
            MODEL,
            "--output",
            output,
            *extra,
        ]
    )
    return [json.loads(line) for line in output.read_text().splitlines() if line.strip()]


def swap_rounds(out: Path, port: int, stop: threading.Event, results: list) -> None:
    """Score the test split again and again until told to stop (after v2 served a full round)."""
    swap_dir = out / "swap"
    swap_dir.mkdir(exist_ok=True)
    round_no = 0
    while not stop.is_set():
        round_no += 1
        path = swap_dir / f"round-{round_no:02d}.jsonl"
        started = time.perf_counter()
        proc = subprocess.run(
            [
                str(BIN / "xfer-score"),
                str(out / "test.csv"),
                "--target",
                f"127.0.0.1:{port}",
                "--model-name",
                MODEL,
                "--output",
                str(path),
                "--quiet",
                "--concurrency",
                "2",
                "--batch-size",
                "4",
            ],
            capture_output=True,
            text=True,
        )
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        versions: dict[str, int] = {}
        for row in rows:
            key = str(row.get("model_version", "error"))
            versions[key] = versions.get(key, 0) + 1
        results.append(
            {
                "round": round_no,
                "rows": len(rows),
                "failed": sum("error" in r for r in rows),
                "versions": versions,
                "seconds": round(time.perf_counter() - started, 1),
                "exit": proc.returncode,
            }
        )


def shadow_comparison(out: Path) -> dict:
    """Both versions served (labels stable=1, canary=2, from xfer-serving-configs), the test
    split and the photos scored on stable with canary as the shadow, xfer-compare-versions on
    the rows: its JSON report."""
    base = out / "models" / MODEL
    run([BIN / "xfer-serving-configs", "--model-name", MODEL, "--published", base,
         "--container-base-path", base, "--policy", "all", "--labels", "stable=1,canary=2",
         "--out", out / "configs"], stdout=subprocess.DEVNULL)  # fmt: skip
    port = free_port()
    with open(out / "server-shadow.log", "w") as log:
        server = subprocess.Popen(
            [BIN / "xfer-serve", f"--port={port}", "--rest_api_port=0", "--host=127.0.0.1",
             f"--model_config_file={out / 'configs' / 'models.config'}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            for version in (1, 2):
                wait_for_version(port, version, server)
            score(out, port, out / "scored-shadow.jsonl", "--version-label", "stable",
                  "--shadow-version-label", "canary", listing=photo_list(out))  # fmt: skip
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    report = out / "compare" / "compare-versions.json"
    run([BIN / "xfer-compare-versions", out / "scored-shadow.jsonl", "--out", report],
        stdout=subprocess.DEVNULL)  # fmt: skip
    return json.loads(report.read_text())


def accuracy(rows: list[dict]) -> float:
    labelled = [r for r in rows if "labels" in r and r.get("label") is not None]
    return sum(r["labels"][0] == r["label"] for r in labelled) / max(1, len(labelled))


PHOTOS = {  # photographs that installed packages ship: nothing like a digit
    "skimage": ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png"],
    "sklearn.datasets": ["images/china.jpg", "images/flower.jpg"],
    "matplotlib": ["mpl-data/sample_data/grace_hopper.jpg"],
}


def photo_list(out: Path) -> Path:
    """The test split with a handful of photos mixed in (label `photo`): scored together, the
    model's out-of-distribution flag should pick out the photos and few digits."""
    import importlib

    lines = (out / "test.csv").read_text().splitlines()
    for package, names in PHOTOS.items():
        root = Path(importlib.import_module(package).__file__).parent
        root = root / "data" if package == "skimage" else root
        lines += [f"{root / name},photo" for name in names if (root / name).exists()]
    mixed = out / "test-with-photos.csv"
    mixed.write_text("\n".join(lines) + "\n")
    return mixed


def ood_rates(rows: list[dict]) -> dict:
    """Share of rows flagged out of distribution: the photos, and the test digits."""
    photos = [r for r in rows if r.get("label") == "photo"]
    digits = [r for r in rows if r.get("label") not in (None, "photo") and not r.get("error")]
    flagged = lambda group: sum(bool(r.get("is_ood")) for r in group)  # noqa: E731
    return {
        "photos": len(photos),
        "photos_flagged": flagged(photos),
        "digits": len(digits),
        "digits_flagged": flagged(digits),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="out/demo")
    parser.add_argument("--data", default="", help="class folders (default: the digits)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--model-name", default="", help="default: digits, or the data folder's")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image-size", default="")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument(
        "--head-args",
        default="--head softmax --dropout 0.5 --l2 0.0035 --batch-size 128 --patience 0",
        help="training flags for both versions (v2 differs by its seed)",
    )
    args = parser.parse_args(argv)
    global MODEL
    MODEL = args.model_name or (Path(args.data).resolve().name if args.data else "digits")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    say("1. data")
    data = Path(args.data).resolve() if args.data else out / "digits"
    if not args.data:
        run([BIN / "xfer-sample-data", "digits", data], stdout=subprocess.DEVNULL)
    run([BIN / "xfer-split-list", data, "--split", "test", "--output", out / "test.csv"])

    say("2. bottlenecks with the Beam job (DirectRunner)")
    size = ["--image_size", args.image_size] if args.image_size else []
    t0 = time.perf_counter()
    with open(out / "bottlenecks.log", "w") as log:
        run(
            [
                BIN / "xfer-bottlenecks",
                "--input",
                data,
                "--output",
                out / "bottlenecks",
                "--backbone",
                args.backbone,
                "--weights",
                args.weights,
                *size,
            ],
            stderr=log,
        )
    beam_seconds = time.perf_counter() - t0
    meta = json.loads((out / "bottlenecks" / "metadata.json").read_text())
    print(
        f"{meta['total']} images -> {meta['feature_dim']}-d features in {beam_seconds:.0f}s "
        f"({meta['errors']} errors, {len(meta['duplicates'])} duplicate groups)"
    )

    say("3. export version 1 (head trained on the cached bottlenecks)")
    card1 = make_export(
        out,
        {"epochs": args.epochs},
        f"{args.head_args} --seed 1 --no-progress --run-dir {out / 'runs' / 'v1'}",
    )
    print(
        f"published {out / 'models' / MODEL / '1'}: test accuracy "
        f"{card1['metrics']['test']['accuracy']:.4f}, gate parity "
        f"{card1['gate']['max_abs_diff']['serving_default/scores']:.2g}"
    )

    say("4. the local TF-Serving-compatible server")
    port, rest = free_port(), free_port()
    server_log = open(out / "server.log", "w")  # noqa: SIM115 - the server's, closed at the end
    server = subprocess.Popen(
        [
            str(BIN / "xfer-serve"),
            f"--port={port}",
            f"--rest_api_port={rest}",
            "--host=127.0.0.1",
            f"--model_name={MODEL}",
            f"--model_base_path={out / 'models' / MODEL}",
            "--file_system_poll_wait_seconds=1",
        ],
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_version(port, 1, server)
        print(f"serving {MODEL} v1 on gRPC :{port}, REST :{rest}")

        say("5. score the test split over gRPC, evaluate")
        first = score(
            out, port, out / "scored-v1.jsonl", "--evaluate", "--out-dir", out / "evaluation"
        )
        acc = accuracy(first)
        goal = "met" if acc >= ACCURACY_GOAL else "NOT met"
        print(f"test accuracy over gRPC: {acc:.4f} (goal >= {ACCURACY_GOAL:.0%}: {goal})")
        mixed = photo_list(out)
        ood = ood_rates(score(out, port, out / "scored-with-photos.jsonl", listing=mixed))
        print(
            f"out of distribution (is_ood): {ood['photos_flagged']} of {ood['photos']} photos,"
            f" {ood['digits_flagged']} of {ood['digits']} test digits"
            f" (the threshold aims at 1% of digits; model_card.json, ood)"
        )

        say("6. hot swap: publish version 2 while scoring continues")
        stop, rounds = threading.Event(), []
        scorer = threading.Thread(target=swap_rounds, args=(out, port, stop, rounds))
        scorer.start()
        try:
            # Version 2 is a retrain with another seed, judged against version 1 by the champion
            # gate. On the digits' 171 test images one image is 0.58 accuracy points and about 6
            # points of a class's recall, so the demo allows a retrain's noise (2 and 20 points)
            # where the defaults (0.5 and 5) would refuse a single image's difference.
            card2 = make_export(
                out,
                {"epochs": args.epochs},
                f"{args.head_args} --seed 2 --no-progress --run-dir {out / 'runs' / 'v2'}"
                " --max-regression 2 --max-class-regression 20",
            )
            champion = card2.get("champion") or {}
            print(
                f"champion gate: {champion.get('outcome')}; accuracy"
                f" {(champion.get('accuracy') or {}).get('candidate')} vs version 1's"
                f" {(champion.get('accuracy') or {}).get('champion')},"
                f" top-1 agreement {champion.get('agreement')}"
            )
            wait_for_version(port, 2, server)
            seen_v2 = len(rounds)
            while len(rounds) <= seen_v2 + 1 and scorer.is_alive():
                time.sleep(0.5)  # one complete round after v2 became available
        finally:
            stop.set()
            scorer.join()
        print(f"{'round':>5} {'rows':>5} {'failed':>6}  model_version -> rows")
        for r in rounds:
            print(f"{r['round']:>5} {r['rows']:>5} {r['failed']:>6}  {r['versions']}")
        failed = sum(r["failed"] for r in rounds)
        seen = sorted({v for r in rounds for v in r["versions"]})
        print(f"model versions seen while swapping: {seen}; failed requests: {failed}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        server_log.close()

    say("7. versions 1 and 2 on the same images: shadow scoring, then xfer-compare-versions")
    compared = shadow_comparison(out)
    agreement = compared.get("agreement")
    print(
        f"{compared.get('compared')} images answered by both: top-1 agreement"
        f" {'n/a' if agreement is None else f'{agreement:.4f}'}, {compared.get('flipped')}"
        f" flipped (matrix and score shift: {out / 'compare' / 'compare-versions.png'})"
    )

    (out / "demo-summary.json").write_text(
        json.dumps(
            {
                "test_accuracy_grpc": acc,
                "accuracy_goal_met": acc >= ACCURACY_GOAL,
                "ood": ood,
                "beam_seconds": beam_seconds,
                "swap_rounds": rounds,
                "swap_failed": failed,
                "shadow": {k: compared.get(k) for k in ("compared", "agreement", "flipped")},
                "wall_seconds": time.perf_counter() - started,
            },
            indent=2,
        )
        + "\n"
    )
    say(f"outputs in {out} ({time.perf_counter() - started:.0f}s)")
    listing = [
        ("digits/", "the dataset: one PNG folder per class (scikit-learn's scans)"),
        ("test.csv", "the test split (uri,label), input of the client"),
        ("bottlenecks/", "Beam output: features-*.tfrecord.gz, labels.txt, metadata.json, errors"),
        (
            "runs/v1/, runs/v2/",
            "training runs: config, metrics.json, curves.png, report.html (open it in a browser)",
        ),
        (f"models/{MODEL}/1/, 2/", "published SavedModel versions, as TF Serving loads them"),
        ("scored-v1.jsonl", "scored test split (uri, label, labels, scores, model_version)"),
        ("scored-with-photos.jsonl", "the test split and a few photos: ood_score, is_ood per row"),
        ("evaluation/", "metrics.json, report.txt, confusion_matrix.png, misclassified.png"),
        ("swap/round-*.jsonl", "scoring rounds during the v1 -> v2 hot swap"),
        ("scored-shadow.jsonl", "v1 (stable) rows with v2 (canary) answers under `shadow`"),
        ("compare/", "xfer-compare-versions: agreement, flips per class pair, score shift"),
        ("server.log, export.log, bottlenecks.log", "logs of each stage"),
        ("demo-summary.json", "accuracy, swap rounds, failures, wall time"),
    ]
    for name, what in listing:
        if name != "digits/" or not args.data:
            print(f"  {name:<40} {what}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
