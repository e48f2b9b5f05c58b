"""xfer-beam-score on the DirectRunner against the local server: same rows as xfer-score."""

import json

import pytest
from imagegen import COLOURS, encode, square_image
from testconfig import MODEL

from beam_jobs import score as beam_score


def read_jsonl(folder, prefix):
    return [
        json.loads(line)
        for p in sorted(folder.glob(f"{prefix}-*.jsonl"))
        for line in p.read_text().splitlines()
    ]


@pytest.fixture
def folder(tmp_path):
    import numpy as np

    rng = np.random.default_rng(21)
    root = tmp_path / "in"
    root.mkdir()
    for i, colour in enumerate(["red", "green", "blue"] * 4):
        (root / f"{i:02d}_{colour}.png").write_bytes(
            encode(square_image(COLOURS[colour], 48, rng), "PNG")
        )
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff definitely not a jpeg")
    (root / "huge.png").write_bytes(encode(square_image(COLOURS["red"], 400, rng), "PNG"))
    return root


def test_beam_scoring_against_the_server_matches_the_client(two_version_server, folder, tmp_path):
    target = f"127.0.0.1:{two_version_server.grpc_port}"
    out = tmp_path / "out"
    common = [
        "--target",
        target,
        "--model-name",
        MODEL,
        "--version-label",
        "stable",
        "--max-message-mb",
        "0.1",
        "--batch-size",
        "4",
    ]
    beam_score.run(["--input", str(folder), "--output", str(out), *common])
    rows = {r["uri"]: r for r in read_jsonl(out, "predictions")}
    errors = {e["uri"]: e["error"] for e in read_jsonl(out, "errors")}
    assert len(rows) == 12
    assert set(errors) == {str(folder / "broken.jpg"), str(folder / "huge.png")}
    assert errors[str(folder / "broken.jpg")].startswith(
        "INVALID_ARGUMENT: not a decodable image: Invalid JPEG data"
    )
    assert "larger than the request limit" in errors[str(folder / "huge.png")]
    assert {r["model_version"] for r in rows.values()} == {1}  # the `stable` label
    assert all(isinstance(r["ood_score"], float) and "is_ood" in r for r in rows.values())
    assert all(r["labels"][0] == uri.rsplit("_", 1)[1][:-4] for uri, r in rows.items())

    from client.cli import main as score_main

    scored = tmp_path / "client.jsonl"
    assert score_main([str(folder), "--output", str(scored), "--quiet", *common]) == 3
    client_rows = {
        r["uri"]: r for r in map(json.loads, scored.read_text().splitlines()) if "labels" in r
    }
    assert client_rows.keys() == rows.keys()
    for uri, row in rows.items():
        assert row["labels"] == client_rows[uri]["labels"]
        assert row["scores"] == pytest.approx(client_rows[uri]["scores"], abs=1e-6)


def test_an_unknown_model_fails_every_row_not_the_job(two_version_server, folder, tmp_path):
    out = tmp_path / "out"
    beam_score.run(
        [
            "--input",
            str(folder),
            "--output",
            str(out),
            "--target",
            f"127.0.0.1:{two_version_server.grpc_port}",
            "--model-name",
            "nope",
        ]
    )
    assert read_jsonl(out, "predictions") == []
    errors = read_jsonl(out, "errors")
    assert len(errors) == 14
    assert all(
        "NOT_FOUND" in e["error"] or "larger than" in e["error"] or "unreadable" in e["error"]
        for e in errors
    )


def test_image_weight_bounds_both_images_and_bytes_per_request():
    from client.batching import request_bytes

    weight = beam_score.ImageWeight(batch_size=4, max_bytes=10_000)
    small = [b"x" * 10] * 10
    assert sum(weight(i) for i in small[:4]) <= beam_score.BATCH_CAPACITY
    assert sum(weight(i) for i in small[:5]) > beam_score.BATCH_CAPACITY  # 5 > batch_size
    big = [b"x" * 2800] * 4
    assert sum(weight(i) for i in big[:3]) <= beam_score.BATCH_CAPACITY
    assert request_bytes([2800] * 3) <= 10_000
    assert sum(weight(i) for i in big[:4]) > beam_score.BATCH_CAPACITY  # 4 would not fit
    assert request_bytes([2800] * 4) > 10_000


def test_beam_scoring_with_client_preprocessing_matches_the_bytes_path(
    two_version_server, folder, tmp_path
):
    """--preprocess client in the workers: the same rows, within 1e-5, as the bytes path; the
    400x400 PNG over the file limit is scored, since its request is its 32x32x3 pixels."""
    target = f"127.0.0.1:{two_version_server.grpc_port}"
    common = ["--target", target, "--model-name", MODEL, "--max-message-mb", "0.1",
              "--batch-size", "4"]  # fmt: skip
    by_bytes, by_pixels = tmp_path / "bytes", tmp_path / "pixels"
    beam_score.run(["--input", str(folder), "--output", str(by_bytes), *common])
    beam_score.run(
        ["--input", str(folder), "--output", str(by_pixels), *common, "--preprocess", "client"]
    )
    rows = {r["uri"]: r for r in read_jsonl(by_bytes, "predictions")}
    pixel_rows = {r["uri"]: r for r in read_jsonl(by_pixels, "predictions")}
    errors = {e["uri"]: e["error"] for e in read_jsonl(by_pixels, "errors")}
    huge = str(folder / "huge.png")
    assert pixel_rows.keys() == rows.keys() | {huge}
    assert pixel_rows[huge]["labels"][0] == "red"
    for uri, row in rows.items():
        assert pixel_rows[uri]["labels"] == row["labels"]
        assert pixel_rows[uri]["model_version"] == row["model_version"]
        assert pixel_rows[uri]["scores"] == pytest.approx(row["scores"], abs=1e-5)
    broken = str(folder / "broken.jpg")
    assert errors == {
        e["uri"]: e["error"] for e in read_jsonl(by_bytes, "errors") if e["uri"] == broken
    }


def test_image_weight_counts_images_only_for_client_preprocessing():
    weight = beam_score.ImageWeight(batch_size=4, max_bytes=10_000, pixels=True)
    assert weight(b"x" * 9_000) == weight(b"x") == beam_score.BATCH_CAPACITY // 4
