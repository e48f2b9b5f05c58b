"""xfer-score against the real local server: happy path, bad files, limits, targeting, REST, API."""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from imagegen import encode
from PIL import Image
from testconfig import MODEL

from client.cli import main
from client.config import ScoreConfig
from client.scorer import run

CLASSES = {"red", "green", "blue"}


OOD = ("ood_score", "is_ood")  # the session's model has an OOD detector
TIMES = ("scored_at", "mtime")  # when the row was decided; the local file's mtime


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_directory_scored_once_each_with_labels_and_version(
    target, shapes_root, good_images, tmp_path
):
    from client.output import parse_timestamp

    out = tmp_path / "scored.jsonl"
    started = time.time()
    code = main(
        [str(shapes_root), "--target", target, "--model-name", MODEL, "--output", str(out),
         "--labels-from-folders", "--batch-size", "16", "--quiet"]
    )  # fmt: skip
    ended = time.time()
    rows = rows_of(out)
    # notes.txt is not an image name; broken.jpg is, and fails
    assert code == 3
    assert sorted(r["uri"] for r in rows) == sorted(
        map(str, good_images + [shapes_root / "blue" / "broken.jpg"])
    )
    scored = [r for r in rows if "error" not in r]
    assert len(scored) == len(good_images)
    for row in rows:  # when each row was decided; the file's modification time
        assert started - 0.001 <= parse_timestamp(row["scored_at"]) <= ended + 0.001
        assert row["scored_at"].endswith("+00:00") and row["mtime"].endswith("+00:00")
        assert parse_timestamp(row["mtime"]) == pytest.approx(
            Path(row["uri"]).stat().st_mtime, abs=0.001
        )
    for row in scored:
        assert set(row) == {"uri", "label", "labels", "scores", "model_version", *OOD, *TIMES}
        assert isinstance(row["ood_score"], float) and row["is_ood"] in (True, False)
        assert set(row["labels"]) == CLASSES and row["scores"] == sorted(
            row["scores"], reverse=True
        )
        assert row["model_version"] == 2  # unpinned: the highest available version
        assert row["label"] == Path(row["uri"]).parent.name
    accuracy = np.mean([r["labels"][0] == r["label"] for r in scored])
    assert accuracy > 0.9


@pytest.mark.parametrize(
    "pin, version",
    [
        (["--version", "1"], 1),
        (["--version-label", "canary"], 2),
        (["--version-label", "stable"], 1),
    ],
)
def test_version_and_label_pinning(target, good_images, tmp_path, pin, version):
    out = tmp_path / "s.jsonl"
    args = [str(p) for p in good_images[:5]]
    assert (
        main(
            [
                *args,
                "--target",
                target,
                "--model-name",
                MODEL,
                "--output",
                str(out),
                "--quiet",
                *pin,
            ]
        )
        == 0
    )
    assert [r["model_version"] for r in rows_of(out)] == [version] * 5


def test_corrupt_empty_and_non_image_files_are_isolated(target, good_images, tmp_path):
    folder = tmp_path / "mixed" / "red"
    folder.mkdir(parents=True)
    for i, p in enumerate(good_images[:20]):
        (folder / f"good_{i:02d}{p.suffix}").write_bytes(p.read_bytes())
    (folder / "good_05_corrupt.jpg").write_bytes(good_images[0].read_bytes()[:40])
    (folder / "good_11_empty.png").write_bytes(b"")
    (folder / "good_17_text.png").write_bytes(b"this is not an image at all")
    out = tmp_path / "mixed.jsonl"
    config = ScoreConfig(inputs=[str(tmp_path / "mixed")], target=[target], model_name=MODEL,
                         output=str(out), batch_size=8, quiet=True)  # fmt: skip
    summary = run(config)
    rows = {Path(r["uri"]).name: r for r in rows_of(out)}
    assert len(rows) == 23 and summary.total == 23
    assert summary.scored == 20 and summary.failed == 3
    bad = {n: r["error"] for n, r in rows.items() if "error" in r}
    assert set(bad) == {"good_05_corrupt.jpg", "good_11_empty.png", "good_17_text.png"}
    for error in bad.values():  # the server's own message, with its status code
        assert error.startswith("INVALID_ARGUMENT: not a decodable image")
    assert "unknown format" in bad["good_17_text.png"]
    # bisecting cost a few extra requests, not one per image
    assert 3 < summary.requests < 23


def noise_jpeg(path: Path, side: int, seed: int) -> int:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    path.write_bytes(encode(Image.fromarray(pixels), "JPEG", quality=95))
    return path.stat().st_size


def test_requests_split_by_bytes_and_oversized_file_is_an_error_row(target, tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    sizes = [noise_jpeg(folder / f"n{i:02d}.jpg", 56, i) for i in range(40)]
    huge = noise_jpeg(folder / "zz_huge.jpg", 300, 99)
    limit = int(0.05 * 1024 * 1024)
    assert max(sizes) < limit / 4 and sum(sizes) > 3 * limit and huge > limit
    out = tmp_path / "big.jsonl"
    config = ScoreConfig(inputs=[str(folder)], target=[target], model_name=MODEL, output=str(out),
                         batch_size=64, max_message_mb=0.05, quiet=True)  # fmt: skip
    summary = run(config)
    rows = {Path(r["uri"]).name: r for r in rows_of(out)}
    assert summary.scored == 40 and summary.failed == 1
    assert "over the limit of 52428" in rows["zz_huge.jpg"]["error"]
    # a request larger than the channel's limit would have failed: each one fitted
    assert summary.requests >= math.ceil(sum(sizes) / limit)
    assert summary.retries == 0


class LateFrontDoor(grpc.GenericRpcHandler):
    """A front door (like an ingress) too slow for any deadline: it forwards a request to the
    server only once the caller has given up on it, so the server's answer always comes late."""

    def __init__(self, upstream: grpc.Channel):
        self.upstream = upstream

    def service(self, details):
        method = details.method

        def forward_late(request: bytes, context):
            ended = threading.Event()
            context.add_callback(ended.set)  # the call ended: deadline passed or cancelled
            ended.wait(60)
            with contextlib.suppress(grpc.RpcError):  # nobody is waiting for the answer
                return self.upstream.unary_unary(method)(request, timeout=30)

        return grpc.unary_unary_rpc_method_handler(forward_late)


def test_deadline_exceeded_after_retries_stops_the_run_without_rows(target, good_images, tmp_path):
    """DEADLINE_EXCEEDED is the server's state, not the images': retried (here capped by
    --max-retries, which still works beside the time budget), then the run stops, no rows.

    The server answers each request only after its deadline. A short deadline straight to the
    server is no such bound: gRPC ends a call at its deadline by a timer, and on a loaded
    machine the model's answer came first in 10 runs of 400 (1 ms deadline, rows written)."""
    from client.scorer import Unreachable

    upstream = grpc.insecure_channel(target)
    front = grpc.server(futures.ThreadPoolExecutor(4), handlers=[LateFrontDoor(upstream)])
    port = front.add_insecure_port("127.0.0.1:0")
    front.start()
    try:
        out = tmp_path / "slow.jsonl"
        inputs = [str(p) for p in good_images[:32]]
        config = ScoreConfig(inputs=inputs, target=[f"127.0.0.1:{port}"], model_name=MODEL,
                             output=str(out), batch_size=32, timeout=0.05, max_retries=2,
                             initial_backoff=0.01, quiet=True)  # fmt: skip
        with pytest.raises(
            Unreachable, match="3 attempts; --retry-budget-s 60, --max-retries 2"
        ) as stopped:
            run(config)
        assert "last error DEADLINE_EXCEEDED" in str(stopped.value)
        assert rows_of(out) == []
    finally:
        front.stop(0)
        upstream.close()


def test_unknown_model_stops_the_run(target, good_images, tmp_path, capsys):
    out = tmp_path / "none.jsonl"
    code = main(
        [
            str(good_images[0]),
            "--target",
            target,
            "--model-name",
            "nope",
            "--output",
            str(out),
            "--quiet",
        ]
    )
    assert code == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert out.read_text() == ""


def test_dead_target_among_several_is_routed_around(target, good_images, tmp_path):
    from servertools import free_port

    out = tmp_path / "two.jsonl"
    dead = f"127.0.0.1:{free_port()}"
    config = ScoreConfig(inputs=[str(p) for p in good_images[:24]], target=[dead, target],
                         model_name=MODEL, output=str(out), batch_size=4, initial_backoff=0.01,
                         timeout=5, quiet=True)  # fmt: skip
    summary = run(config)
    assert summary.scored == 24 and summary.failed == 0
    assert summary.retries >= 1  # the dead one was tried and refused


def test_dns_name_with_round_robin(target, good_images, tmp_path):
    """A dns:/// target: every address the name resolves to, balanced round-robin (here
    localhost, as a Kubernetes headless Service name would be in a cluster)."""
    port = target.rsplit(":", 1)[1]
    out = tmp_path / "dns.jsonl"
    config = ScoreConfig(inputs=[str(p) for p in good_images[:12]],
                         target=[f"dns:///localhost:{port}"], model_name=MODEL,
                         output=str(out), batch_size=4, timeout=10, quiet=True)  # fmt: skip
    summary = run(config)
    assert summary.scored == 12 and summary.failed == 0


def test_rest_protocol_matches_grpc(target, rest_target, good_images, tmp_path):
    inputs = [str(p) for p in good_images[:10]]
    grpc_out, rest_out = tmp_path / "g.jsonl", tmp_path / "r.csv"
    assert (
        main(
            [
                *inputs,
                "--target",
                target,
                "--model-name",
                MODEL,
                "--output",
                str(grpc_out),
                "--quiet",
            ]
        )
        == 0
    )
    assert main([*inputs, "--target", rest_target, "--protocol", "rest", "--model-name", MODEL,
                 "--output", str(rest_out), "--quiet", "--batch-size", "3"]) == 0  # fmt: skip
    from client.output import read_rows

    by_uri = {r["uri"]: r for r in rows_of(grpc_out)}
    rest_rows = list(read_rows(str(rest_out)))
    assert len(rest_rows) == 10
    for row in rest_rows:
        assert row["labels"] == by_uri[row["uri"]]["labels"]
        assert np.allclose(row["scores"], by_uri[row["uri"]]["scores"], atol=1e-5)
        assert row["model_version"] == 2  # from GET /v1/models/shapes, read once


def test_python_api_yields_rows(target, shapes_root):
    import client

    rows = list(client.score(str(shapes_root / "green"), target=target, model_name=MODEL,
                             labels_from_folders=True, concurrency=2))  # fmt: skip
    assert len(rows) == 40
    assert all(r["label"] == "green" and r["model_version"] == 2 for r in rows)
    assert sum(r["labels"][0] == "green" for r in rows) >= 36


def test_tfrecord_input(target, good_images, tmp_path):
    import tensorflow as tf

    records = tmp_path / "imgs.tfrecord"
    with tf.io.TFRecordWriter(str(records)) as writer:
        for p in good_images[:6]:
            feature = {
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[p.read_bytes()])
                ),
                "image/uri": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[str(p).encode()])
                ),
            }
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )
    out = tmp_path / "tf.jsonl"
    assert (
        main(
            [
                str(records),
                "--target",
                target,
                "--model-name",
                MODEL,
                "--output",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = rows_of(out)
    assert sorted(r["uri"] for r in rows) == sorted(map(str, good_images[:6]))
    # Each record's image was scored: a full row, as for an image file.
    for row in rows:
        assert set(row) == {"uri", "labels", "scores", "model_version", *OOD, "scored_at"}, row
        assert set(row["labels"]) == CLASSES and row["model_version"] == 2


def test_no_server_at_all_stops_with_exit_2_one_message_and_no_rows(good_images, tmp_path, capsys):
    import time

    from servertools import free_port

    out = tmp_path / "none.jsonl"
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    code = main([*(str(p) for p in good_images[:40]), "--target", dead, "--model-name", MODEL,
                 "--output", str(out), "--batch-size", "4", "--retry-budget-s", "2",
                 "--max-backoff", "0.2", "--quiet"])  # fmt: skip
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2, err
    assert out.read_text() == ""  # no row for an image the server never saw
    assert f"no server answered: {dead} did not answer for 2.0 s" in err, err
    assert "--retry-budget-s 2" in err and "Connection refused" in err
    assert "0 rows written before stopping" in err and "--resume" in err
    assert err.count("xfer-score: error:") == 1
    assert 2 <= elapsed < 15  # it retried for the budget, not for the default 60 s


def test_resume_rescores_transient_error_rows_left_by_older_runs(target, good_images, tmp_path):
    images = tmp_path / "imgs" / "red"
    images.mkdir(parents=True)
    for i, p in enumerate(good_images[:10]):
        (images / f"{i:02d}{p.suffix}").write_bytes(p.read_bytes())
    (images / "zz_broken.jpg").write_bytes(b"\xff\xd8 not really")
    files = sorted(images.iterdir())
    out = tmp_path / "old.jsonl"
    config = ScoreConfig(inputs=[str(tmp_path / "imgs")], target=[target], model_name=MODEL,
                         output=str(out), batch_size=4, quiet=True)  # fmt: skip
    # what a client before the retry budget left after a server restart: error rows
    first = run(config.replace(inputs=[str(f) for f in files[:4]] + [str(files[-1])]))
    assert first.scored == 4 and first.failed == 1
    old_rows = [(4, "UNAVAILABLE"), (5, "DEADLINE_EXCEEDED"), (6, "RESOURCE_EXHAUSTED"),
                (4, "UNAVAILABLE")]  # fmt: skip
    with open(out, "a") as f:
        for index, code in old_rows:
            row = {"uri": str(files[index]), "error": f"{code}: gone (after 6 attempts)"}
            f.write(json.dumps(row) + "\n")
    summary = run(config.replace(resume=True))
    rows = rows_of(out)
    assert len(rows) == 11 and len({r["uri"] for r in rows}) == 11  # each image exactly once
    assert [r["uri"] for r in rows if "error" in r] == [str(files[-1])]  # the broken one, kept
    assert summary.skipped == 5 and summary.scored == 6 and summary.failed == 0


def test_resume_matches_images_not_spellings(target, good_images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("red", "green"):
        (tmp_path / "many" / name).mkdir(parents=True)
    for i, p in enumerate(good_images[:12]):
        (tmp_path / "many" / ("red" if i < 5 else "green") / f"{i:02d}{p.suffix}").write_bytes(
            p.read_bytes()
        )
    out = tmp_path / "s.csv"
    config = ScoreConfig(inputs=["many/red"], target=[target], model_name=MODEL, output=str(out),
                         quiet=True, resume=True)  # fmt: skip
    assert run(config).scored == 5
    # the folder again, spelled otherwise: only the 7 others are scored
    second = run(config.replace(inputs=["./many"]))
    assert (second.scored, second.skipped) == (7, 5)
    third = run(config.replace(inputs=[str(tmp_path / "many"), "many/green/../red"]))
    assert (third.total, third.skipped) == (0, 17)  # 12 + 5: every input actually skipped
    from client.output import read_rows

    rows = list(read_rows(str(out)))
    assert len(rows) == 12 and all("error" not in r for r in rows)
    # rows keep the spelling given (the `uri` users join on), here relative
    assert {r["uri"].split("/")[0] for r in rows} == {"many", "."}


def test_a_mistyped_input_stops_before_anything_is_scored(target, good_images, tmp_path, capsys):
    out = tmp_path / "typo.jsonl"
    missing = str(tmp_path / "imgs-typo")
    code = main([str(good_images[0]), missing, "--target", target, "--model-name", MODEL,
                 "--output", str(out), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"no such input: '{missing}'" in err and "nothing was scored" in err
    assert not out.exists()


@pytest.mark.parametrize("user_level", [None, "0"])
def test_tensorflow_start_up_notices_are_dropped_unless_the_user_sets_the_level(
    target, good_images, tmp_path, user_level
):
    """stdout holds results, stderr what the user needs: TensorFlow's start-up notices (oneDNN,
    CUDA drivers, absl), which tensorflow-serving-api's protos pull in, are dropped by default;
    a user who sets TF_CPP_MIN_LOG_LEVEL gets everything TensorFlow says."""
    import subprocess
    import sys

    from clienttools import REPO, client_env

    env = {k: v for k, v in client_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if user_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = user_level
    out = tmp_path / "s.jsonl"
    args = [*(str(p) for p in good_images[:2]), "--target", target, "--model-name", MODEL]
    done = subprocess.run(
        [sys.executable, "-m", "client", *args, "--output", str(out), "--quiet"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and len(rows_of(out)) == 2
    noisy = "oneDNN custom operations" in done.stderr or "InitializeLog" in done.stderr
    assert noisy == (user_level is not None), done.stderr
