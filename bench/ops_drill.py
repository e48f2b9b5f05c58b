"""Operations drills on the local server (issue 14): 32 gRPC clients, a hot swap and a broken
version under their load, and a corpus of bad requests with the server's memory.

    python bench/ops_drill.py --model_base_path out/demo/models/digits --images out/demo/digits \
        --seconds 30 --json ops-drill.json

Starts `python -m serving` as bench/rest_drill.py does (free ports, loopback), polling the file
system every second and batching as the deployment does (the batching.config xfer-serving-configs
writes; --no_batching for none), on a copy of the base path's latest version in a temporary
directory, since the drill publishes new versions into it. Then:

1. load: `--clients` threads, each with its own channel (its own connection), each sending one
   image per Predict on serving_default for `--seconds`: requests, failures by status code,
   requests/s, latency p50/p99.
2. hot swap: the same load; the served version is copied to the next number as `xfer-export`
   publishes (a hidden `.tmp-export-<pid>-…` directory, fsynced, one rename); the time from the
   rename to the first response from the new version, failures, p99 before, during (rename to
   that response) and after.
3. broken versions: the same load; a version with a truncated variables file, then one whose
   saved_model.pb is garbage: failures, what GetModelStatus says of each, the version still
   served.
4. bad requests (bench/ops_requests.py): each entry's status and message, the server's RSS before,
   after one pass and after `--repeats` more, and a good image's scores before and after.

Prints a table, writes every figure as JSON with --json. Exit status 1 if a good request failed,
a bad one was answered OK, or the good image's scores changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(Path(__file__).parent), str(ROOT)]
from ops_load import Load, summary, wait_for  # noqa: E402
from ops_requests import Target, as_expected, bad_requests, channel, memory_mb, predict_request  # noqa: E402
from rest_drill import default_image, free_port, start_server  # noqa: E402

from export.fsutil import fsync_tree, make_temp_dir  # noqa: E402


def served_version(target: Target, images: list[bytes]) -> int:
    with channel(target) as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        reply = stub.Predict(predict_request(target.model, images[:1]), timeout=60)
        return reply.model_spec.version.value


def version_status(target: Target, version: int) -> dict | None:
    """GetModelStatus of one version: state, error code name and message (None: not seen yet)."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = target.model
    request.model_spec.version.value = version
    with channel(target) as ch:
        try:
            reply = model_service_pb2_grpc.ModelServiceStub(ch).GetModelStatus(request, timeout=10)
        except grpc.RpcError:
            return None
    status = reply.model_version_status[0]
    state = get_model_status_pb2.ModelVersionStatus.State.Name(status.state)
    code = grpc.StatusCode
    name = next((c.name for c in code if c.value[0] == status.status.error_code), "UNKNOWN")
    return {"state": state, "error_code": name, "error_message": status.status.error_message}


def publish(base: Path, source: int, version: int, damage=None) -> float:
    """Copy `<base>/<source>` to `<base>/<version>` as xfer-export publishes (a hidden temporary,
    fsynced, then one rename), after `damage(tmp)` if given. Returns the time of the rename."""
    tmp = Path(make_temp_dir(base, prefix=f".tmp-export-{os.getpid()}-"))
    shutil.copytree(base / str(source), tmp, dirs_exist_ok=True)
    if damage is not None:
        damage(tmp)
    fsync_tree(tmp)
    renamed = time.monotonic()
    os.rename(tmp, base / str(version))
    return renamed


def next_version(base: Path) -> int:
    return 1 + max(int(p.name) for p in base.iterdir() if p.name.isdigit())


def truncate_variables(version_dir: Path) -> None:
    data = next((version_dir / "variables").glob("variables.data-*"))
    with data.open("r+b") as f:
        f.truncate(data.stat().st_size // 2)


def garbage_saved_model(version_dir: Path) -> None:
    (version_dir / "saved_model.pb").write_bytes(b"this is not a SavedModel\n" * 64)


BREAKAGES = {
    "variables.data truncated to half": truncate_variables,
    "saved_model.pb garbage": garbage_saved_model,
}


def load_drill(target: Target, clients: int, images: list[bytes], seconds: float) -> dict:
    with Load(target, clients, images) as load:
        started = time.monotonic()
        time.sleep(seconds)
        stopped = time.monotonic()
    return {
        "clients": clients,
        "seconds": round(stopped - started, 1),
        **summary(load.calls, started, stopped),
    }


def hot_swap_drill(
    target: Target, clients: int, images: list[bytes], before: float, after: float, timeout=300.0
) -> dict:
    old = served_version(target, images)
    new = next_version(target.base)
    with Load(target, clients, images) as load:
        started = time.monotonic()
        time.sleep(before)
        renamed = publish(target.base, old, new)
        first = wait_for(lambda: load.first_answer_from(new), timeout, f"version {new} to answer")
        time.sleep(after)
        stopped = time.monotonic()
    calls = load.calls
    last_old = max((c.end for c in calls if c.version == old), default=first)
    return {
        "clients": clients,
        "from_version": old,
        "to_version": new,
        **summary(calls, started, stopped),
        "rename_to_first_new_answer_s": round(first - renamed, 2),
        "last_old_answer_after_first_new_s": round(max(0.0, last_old - first), 2),
        "before": summary(calls, started, renamed),
        "during": summary(calls, renamed, first),
        "after": summary(calls, first, stopped),
    }


def broken_version_drill(
    target: Target, clients: int, images: list[bytes], before: float, after: float, timeout=300.0
) -> dict:
    serving = served_version(target, images)
    published = []
    with Load(target, clients, images) as load:
        started = time.monotonic()
        time.sleep(before)
        for what, damage in BREAKAGES.items():
            version = next_version(target.base)
            renamed = publish(target.base, serving, version, damage)
            status = wait_for(
                lambda v=version: (s := version_status(target, v)) and s["state"] == "END" and s,
                timeout,
                f"version {version} ({what}) to fail",
            )
            published.append(
                {
                    "version": version,
                    "what": what,
                    **status,
                    "failed_after_s": round(time.monotonic() - renamed, 2),
                }
            )
        time.sleep(after)
        stopped = time.monotonic()
    return {
        "clients": clients,
        "serving": serving,
        **summary(load.calls, started, stopped),
        "broken": published,
        "served_after": served_version(target, images),
    }


def read_images(folder: Path | None, count: int = 64) -> list[bytes]:
    if folder is None:
        return [default_image()]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"ops_drill: no .png or .jpg images under {folder}")
    step = max(1, len(files) // count)
    return [p.read_bytes() for p in files[::step][:count]]


def batching_flags(work: Path) -> list[str]:
    """Server-side batching as `xfer-serving-configs` writes it for a deployment."""
    from serving.deploy_configs import DeployConfig, batching_parameters

    path = work / "batching.config"
    path.write_text(batching_parameters(DeployConfig("drill", "/models/drill")))
    return ["--enable_batching", f"--batching_parameters_file={path}"]


def table(results: dict) -> str:
    rows = []
    for key in ("load", "hot_swap", "broken_version"):
        r = results.get(key)
        if r:
            lat = r["latency_ms"]
            rows.append(
                f"{key:<15} {r['requests']:>8} {json.dumps(r['failed']):<28} "
                f"{r['requests_per_s']:>7} {lat['p50']!s:>8} {lat['p99']!s:>8}"
            )
    out = [
        f"{'drill':<15} {'requests':>8} {'failed':<28} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}",
        *rows,
    ]
    swap = results.get("hot_swap")
    if swap:
        out.append(
            f"hot swap {swap['from_version']}->{swap['to_version']}: first answer from the new "
            f"version {swap['rename_to_first_new_answer_s']} s after the rename; p99 "
            + ", ".join(
                f"{w} {swap[w]['latency_ms']['p99']} ms" for w in ("before", "during", "after")
            )
        )
    for b in results.get("broken_version", {}).get("broken", []):
        out.append(
            f"broken v{b['version']} ({b['what']}): {b['state']} {b['error_code']}: "
            f"{b['error_message'][:150]}"
        )
    if "broken_version" in results:
        out.append(f"served after the broken versions: {results['broken_version']['served_after']}")
    bad = results.get("bad_requests")
    if bad:
        out.append(f"\n{'protocol':<8} {'case':<48} {'status':<20} message")
        for c in bad["cases"]:
            out.append(
                f"{c['protocol']:<8} {c['case'][:48]:<48} {c['status']:<20} {c['message'][:110]}"
            )
        keys = [k for k in bad if k.startswith("memory_")]
        out.append("server memory: " + "; ".join(f"{k[7:]} {bad[k]}" for k in keys))
        out.append(f"good image, same scores after: {bad['good_image_same_scores_after']}")
    return "\n".join(out)


def failures(results: dict) -> list[str]:
    found = [
        f"{k}: {results[k]['failed']}"
        for k in ("load", "hot_swap", "broken_version")
        if results.get(k, {}).get("failed")
    ]
    bad = results.get("bad_requests")
    if bad:
        found += [
            f"{c['protocol']} {c['case']}: {c['status']}"
            for c in bad["cases"]
            if not as_expected(c)
        ]
        if not bad["good_image_same_scores_after"]:
            found.append("a good image's scores changed after the corpus")
    return found


DRILLS = ("load", "hot_swap", "broken_version", "bad_requests")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model_base_path",
        type=Path,
        default=ROOT / "out/demo/models/digits",
        help="a published model (its latest version is copied; the name is the folder's)",
    )
    parser.add_argument("--images", type=Path, help="a folder of images (default: one 96x96 PNG)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0, help="the load drill's duration")
    parser.add_argument("--swap_seconds", type=float, default=5.0, help="load before and after")
    parser.add_argument("--repeats", type=int, default=20, help="corpus passes after the first")
    parser.add_argument("--big_batch", type=int, default=1000, help="images in the large batch")
    parser.add_argument("--no_batching", action="store_true", help="serve without batching")
    parser.add_argument("--drills", default=",".join(DRILLS), help="a comma-separated subset")
    parser.add_argument("--server_arg", action="append", default=[], help="extra xfer-serve flag")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--server_log", type=Path, help="keep the server's log here")
    args = parser.parse_args(argv)
    source = args.model_base_path
    latest = max(int(p.name) for p in source.iterdir() if p.name.isdigit())
    images = read_images(args.images)
    work = Path(tempfile.mkdtemp(prefix="xfer-ops-drill-"))
    base = work / source.name
    shutil.copytree(source / str(latest), base / str(latest))
    log_path = args.server_log or work / "server.log"
    extra = ["--file_system_poll_wait_seconds=1"]
    extra += ([] if args.no_batching else batching_flags(work)) + args.server_arg
    port = free_port()
    try:
        proc, rest = start_server(str(base), source.name, extra, log_path, grpc_port=port)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    target = Target(f"127.0.0.1:{port}", rest, source.name, base, proc.pid)
    card = json.loads((source / str(latest) / "assets.extra/model_card.json").read_text())
    results: dict = {
        "model": str(source / str(latest)),
        "preprocessing_version": card.get("preprocessing", {}).get("version"),
        "batching": not args.no_batching,
        "server_args": args.server_arg,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
        "server_memory_at_start": memory_mb(proc.pid),
    }
    drills = args.drills.split(",")
    try:
        if "load" in drills:
            results["load"] = load_drill(target, args.clients, images, args.seconds)
        s = args.swap_seconds
        if "hot_swap" in drills:
            results["hot_swap"] = hot_swap_drill(target, args.clients, images, s, s)
        if "broken_version" in drills:
            results["broken_version"] = broken_version_drill(target, args.clients, images, s, s)
        if "bad_requests" in drills:
            results["bad_requests"] = bad_requests(target, images[0], args.repeats, args.big_batch)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    results["load_average_at_end"] = os.getloadavg()[0]
    log = log_path.read_text(errors="replace")
    results["server_log_tracebacks"] = log.count("Traceback (most recent call last)")
    shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    problems = failures(results)
    print("\n" + ("\n".join(["DID NOT HOLD:", *problems]) if problems else "every check held"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
