"""Pure parts of the client, no server: batching bounds, backoff, torn-line repair, readers."""

from __future__ import annotations

import random

import pytest
from importscan import other_stages_imported

from client.batching import REQUEST_OVERHEAD, batches, fits_alone, request_bytes
from client.inputs import iter_items
from client.output import ResultWriter, done_uris, repair_torn_tail
from client.retry import RetryPolicy, RpcError, call_with_retry


def test_client_imports_nothing_from_the_other_stages():
    assert other_stages_imported("client", {"export", "beam_jobs", "serving"}) == []


def test_interface_names_match_the_export_contract():
    from client import config, transport
    from export import contract

    assert config.INPUT_KEY == contract.INPUT_KEY
    assert config.SERVING_DEFAULT == contract.SERVING_DEFAULT
    assert config.IMAGE_EXTENSIONS == contract.IMAGE_EXTENSIONS
    # the exporter's warmup replays the output filter the client sends
    assert tuple(transport.OUTPUTS) == contract.CLIENT_OUTPUT_FILTER


def test_batches_respect_count_and_bytes_and_keep_order():
    sizes = [random.Random(i).randrange(1, 5000) for i in range(200)]
    out = list(batches(sizes, max_images=7, max_bytes=12000, size=lambda s: s))
    assert [s for b in out for s in b] == sizes
    assert all(len(b) <= 7 for b in out)
    assert all(request_bytes(b) <= 12000 for b in out)
    # greedy: a batch is only closed when the next item would not fit
    for current, following in zip(out, out[1:]):
        assert len(current) == 7 or request_bytes(current + following[:1]) > 12000


def test_an_oversized_item_is_alone_and_flagged():
    out = list(batches([10, 50000, 10], max_images=8, max_bytes=20000, size=lambda s: s))
    assert out == [[10], [50000], [10]]
    assert not fits_alone(50000, 20000) and fits_alone(20000 - REQUEST_OVERHEAD - 16, 20000)


def test_backoff_is_exponential_capped_and_jittered():
    policy = RetryPolicy(max_retries=5, initial_backoff=0.1, max_backoff=1.0)
    rng = random.Random(0)
    for retry, ceiling in [(0, 0.1), (1, 0.2), (3, 0.8), (4, 1.0), (9, 1.0)]:
        delays = [policy.delay(retry, rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= ceiling
        assert max(delays) > 0.8 * ceiling  # spread over the range, not a constant


def test_retry_only_on_transient_codes():
    sleeps = []
    calls = []

    def flaky(attempt):
        calls.append(attempt)
        if attempt < 2:
            raise RpcError("UNAVAILABLE", "down")
        return "ok"

    policy = RetryPolicy(3, 0.01, 0.01)
    assert call_with_retry(flaky, policy, sleep=sleeps.append) == "ok"
    assert calls == [0, 1, 2] and len(sleeps) == 2

    def bad(attempt):
        calls.append(attempt)
        raise RpcError("INVALID_ARGUMENT", "not an image")

    calls.clear()
    with pytest.raises(RpcError) as info:
        call_with_retry(bad, policy, sleep=sleeps.append)
    assert calls == [0] and info.value.attempts == 1

    def always_down(attempt):
        raise RpcError("DEADLINE_EXCEEDED", "slow")

    with pytest.raises(RpcError) as info:
        call_with_retry(always_down, policy, sleep=lambda s: None)
    assert info.value.attempts == 4


def test_torn_last_line_is_dropped_and_rows_kept(tmp_path):
    path = tmp_path / "out.jsonl"
    with ResultWriter(str(path)) as writer:
        for i in range(3):
            writer.write({"uri": f"u{i}", "labels": ["a"], "scores": [1.0], "model_version": 1})
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"uri": "u3", "lab')  # kill -9 in the middle of a write
    assert repair_torn_tail(str(path)) == len(b'{"uri": "u3", "lab')
    assert path.read_bytes() == whole
    assert done_uris(str(path), "jsonl") == {"u0", "u1", "u2"}
    assert repair_torn_tail(str(path)) == 0


def test_csv_output_round_trips(tmp_path):
    path = tmp_path / "out.csv"
    with ResultWriter(str(path), "csv") as writer:
        writer.write(
            {"uri": "a,b.jpg", "labels": ["x", "y"], "scores": [0.75, 0.25], "model_version": 3}
        )
        writer.write({"uri": "c.jpg", "error": "INVALID_ARGUMENT: bad"})
    with ResultWriter(str(path), "csv") as writer:  # reopened: no second header
        writer.write({"uri": "d.jpg", "label": "x", "error": "e"})
    from client.output import read_rows

    rows = list(read_rows(str(path)))
    assert rows[0] == {
        "uri": "a,b.jpg",
        "labels": ["x", "y"],
        "scores": [0.75, 0.25],
        "model_version": 3,
    }
    assert rows[1] == {"uri": "c.jpg", "error": "INVALID_ARGUMENT: bad"}
    assert len(rows) == 3 and path.read_text().count("uri,label") == 1


def test_readers_stream_lists_and_tfrecords(tmp_path, good_images):
    import tensorflow as tf

    listing = tmp_path / "list.csv"
    listing.write_text("uri,label\n" + "\n".join(f"{p},{p.parent.name}" for p in good_images[:3]))
    (tmp_path / "rel.txt").write_text("# comment\n\nsub/x.png\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.png").write_bytes(good_images[1].read_bytes())
    records = tmp_path / "images.tfrecord.gz"
    with tf.io.TFRecordWriter(str(records), options="GZIP") as writer:
        for i, p in enumerate(good_images[:2]):
            feature = {
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[p.read_bytes()])
                )
            }
            if i == 0:
                feature["label"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"red"]))
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
    items = list(iter_items([str(listing), str(tmp_path / "rel.txt"), str(records)]))
    assert [i.uri for i in items[:3]] == [str(p) for p in good_images[:3]]
    assert [i.label for i in items[:3]] == [p.parent.name for p in good_images[:3]]
    assert items[3].uri == str(tmp_path / "sub" / "x.png") and items[3].data
    assert [i.uri for i in items[4:]] == [f"{records}@0", f"{records}@1"]
    assert items[4].label == "red" and items[4].data == good_images[0].read_bytes()
    skipped = list(iter_items([str(listing)], skip={str(good_images[0])}))
    assert len(skipped) == 2
    missing = list(iter_items([str(tmp_path / "nope.jpg")]))
    assert missing[0].error.startswith("cannot read")


def test_client_never_imports_the_model_code():
    """docs/architecture.md: the client is installed next to a serving cluster, without export/."""
    import subprocess
    import sys

    code = (
        "import sys, client.cli, client.scorer, client.transport, client.evaluate, client.output;"
        "print(sorted(m for m in sys.modules if m == 'export' or m.startswith('export.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_retry_moves_to_the_next_target_whatever_the_shared_counter_did():
    import itertools
    import threading

    from client.transport import pick_target

    targets = ["dead", "live"]
    counter, batch = itertools.count(), threading.local()
    firsts = []
    for others in (0, 1, 2, 0, 3):  # requests of other threads between a batch's attempts
        first = pick_target(targets, 0, counter, batch)
        firsts.append(first)
        for _ in range(others):
            next(counter)
        assert pick_target(targets, 1, counter, batch) != first
        assert pick_target(targets, 2, counter, batch) == first
    assert set(firsts) == {"dead", "live"}  # first attempts still spread over both
