"""Pure parts of the client, no server: batching bounds, backoff, torn-line repair, readers."""

from __future__ import annotations

import os
import random

import pytest
from importscan import other_stages_imported

from client.atomicfile import atomic_file, atomic_write
from client.batching import REQUEST_OVERHEAD, batches, fits_alone, request_bytes
from client.config import ScoreConfig
from client.inputs import InputNotFound, canonical_uri, check_inputs, iter_items
from client.output import ResultWriter, done_uris, prepare_resume, read_rows, repair_torn_tail
from client.retry import RetryPolicy, RpcError, call_with_retry


def test_client_imports_nothing_from_the_other_stages():
    # But the one documented exception: --preprocess client calls the contract's pixel step.
    imported = other_stages_imported("client", {"export", "beam_jobs", "serving"})
    assert [i.split(":")[0] + " " + i.split(" ")[1] for i in imported] == [
        "client/pixels.py export.model.pixels"
    ]


def test_interface_names_match_the_export_contract():
    from client import config, transport
    from export import contract

    assert config.INPUT_KEY == contract.INPUT_KEY
    assert config.SERVING_DEFAULT == contract.SERVING_DEFAULT
    assert config.SERVING_PIXELS == contract.SERVING_PIXELS
    assert config.PIXELS_INPUT_KEY == contract.PIXELS_INPUT_KEY
    assert config.PREPROCESSING_OUTPUT == contract.PREPROCESSING_OUTPUT
    assert config.OOD_OUTPUTS == contract.OOD_OUTPUTS
    assert config.IMAGE_EXTENSIONS == contract.IMAGE_EXTENSIONS
    # the exporter's warmup replays the output filter the client sends
    assert tuple(transport.OUTPUTS) == contract.CLIENT_OUTPUT_FILTER
    assert tuple(transport.PIXELS_OUTPUTS) == contract.CLIENT_PIXELS_OUTPUT_FILTER


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
        writer.write({"uri": "o.jpg", "labels": ["x"], "scores": [0.5], "model_version": 4,
                      "ood_score": 3512.25, "is_ood": True})  # fmt: skip
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
    assert rows[2]["ood_score"] == 3512.25 and rows[2]["is_ood"] is True
    assert len(rows) == 4 and path.read_text().count("uri,label") == 1


def test_csv_started_by_an_older_client_keeps_its_columns(tmp_path, caplog):
    """Appending (--resume) to a CSV without the columns added since: its rows stay aligned with
    its own header, the new cells are left out."""
    from client.output import read_rows

    path = tmp_path / "old.csv"
    path.write_text("uri,label,labels,scores,model_version,error\nold.jpg,,x,1.0,1,\n")
    with ResultWriter(str(path), "csv") as writer:
        writer.write(
            {
                "uri": "new.jpg",
                "labels": ["y"],
                "scores": [0.5],
                "model_version": 2,
                "ood_score": 1.5,
                "is_ood": False,
                "scored_at": "2025-03-01T12:00:00Z",
            }
        )
    lines = path.read_text().splitlines()
    assert lines[2] == "new.jpg,,y,0.5,2,"
    assert [r["uri"] for r in read_rows(str(path))] == ["old.jpg", "new.jpg"]
    assert "its header has no ['ood_score', 'is_ood', 'scored_at', 'mtime'] column" in caplog.text


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


class FakeClock:
    """time.monotonic and time.sleep for retry loops: sleeping advances the clock."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def policy_of(config: ScoreConfig) -> RetryPolicy:
    from client.scorer import Scorer

    return Scorer(config, transport=object()).policy


def test_retries_are_bounded_by_time_and_the_defaults_outlive_a_restart():
    """Default flags: a batch is retried for 60 s (not 5 times, ~3 s), delays capped at 10 s."""
    defaults = ScoreConfig()
    assert (defaults.retry_budget_s, defaults.max_retries, defaults.max_backoff) == (60, None, 10)
    policy = policy_of(defaults)
    assert policy.budget_s == 60 and policy.max_retries is None

    # a server that is back after 10 s (or 45 s): the batch succeeds
    for outage in (10.0, 45.0):
        clock = FakeClock()

        def restarting(attempt, clock=clock, outage=outage):
            if clock.now < outage:
                raise RpcError("UNAVAILABLE", "Connection refused")
            return "scored"

        assert call_with_retry(restarting, policy, sleep=clock.sleep, clock=clock) == "scored"
        assert max(clock.sleeps) <= 10.0

    # a server that never comes back: retried until exactly the budget, then its error
    clock = FakeClock()

    def down(attempt):
        raise RpcError("UNAVAILABLE", "Connection refused")

    with pytest.raises(RpcError) as info:
        call_with_retry(down, policy, sleep=clock.sleep, clock=clock)
    assert clock.now == pytest.approx(60.0) and info.value.elapsed_s == pytest.approx(60.0)
    assert info.value.attempts == len(clock.sleeps) + 1 > 6  # the old default stopped at 6
    assert all(0 <= s <= 10.0 for s in clock.sleeps)


def test_max_retries_is_still_a_cap_and_its_flag_still_parses():
    from client.cliargs import parse

    argv = ["x.jpg", "--target", "t:1", "--model-name", "m", "--output", "o.jsonl"]
    config = parse(ScoreConfig, [*argv, "--max-retries", "2", "--retry-budget-s", "5"],
                   prog="xfer-score", description="", exit_codes={})  # fmt: skip
    assert config.max_retries == 2 and config.retry_budget_s == 5
    clock = FakeClock()
    with pytest.raises(RpcError) as info:
        call_with_retry(
            lambda attempt: (_ for _ in ()).throw(RpcError("UNAVAILABLE", "down")),
            policy_of(config),
            sleep=clock.sleep,
            clock=clock,
        )
    assert info.value.attempts == 3 and clock.now < 5


@pytest.mark.parametrize(
    "code, message, retryable",
    [
        ("UNAVAILABLE", "failed to connect to all addresses; last error: UNKNOWN: ipv4:"
         "127.0.0.1:1: Failed to connect to remote host: Connection refused", True),
        ("UNAVAILABLE", "failed to connect to all addresses; last error: UNKNOWN: ipv4:"
         "127.0.0.1:1: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:"
         "1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: self signed "
         "certificate", False),
        ("UNAVAILABLE", "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:"
         "1: Custom verification check failed with error: UNAUTHENTICATED: Hostname Verification "
         "Check failed.", False),
        ("UNAVAILABLE", "https://h:1/v1/models/m: [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
         "verify failed: self-signed certificate (_ssl.c:1006)", False),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", True),
        ("RESOURCE_EXHAUSTED", "rate limited", True),
        ("RESOURCE_EXHAUSTED", "Received message larger than max (5242880 vs. 4194304)", False),
        ("INVALID_ARGUMENT", "not a decodable image", False),
    ],
)  # fmt: skip
def test_what_waiting_cannot_fix_is_not_retried(code, message, retryable):
    assert RpcError(code, message).retryable is retryable


def test_a_stopping_run_abandons_pending_retries_at_once():
    import threading
    import time

    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    with pytest.raises(RpcError):
        call_with_retry(
            lambda attempt: (_ for _ in ()).throw(RpcError("UNAVAILABLE", "down")),
            RetryPolicy(initial_backoff=30, max_backoff=30, budget_s=60),
            stop=stop,
        )
    assert time.monotonic() - started < 1


class DownTransport:
    """Every request fails as a server that is not there does."""

    def __init__(self, code="UNAVAILABLE", message="Connection refused"):
        self.code, self.message = code, message
        self.calls = 0

    def predict(self, images, attempt=0):
        self.calls += 1
        raise RpcError(self.code, self.message)

    def close(self):
        pass


def test_no_server_within_the_budget_stops_the_run_without_rows():
    import time

    from client.inputs import Item
    from client.scorer import Scorer, TlsFailure, Unreachable

    config = ScoreConfig(target=["a:1", "b:2"], model_name="m", retry_budget_s=0.5,
                         initial_backoff=0.01, max_backoff=0.05, batch_size=2,
                         concurrency=3)  # fmt: skip
    scorer = Scorer(config, transport=DownTransport())
    items = [Item(f"{i}.jpg", data=b"x") for i in range(40)]
    rows = []
    started = time.monotonic()
    with pytest.raises(Unreachable) as info:
        for row in scorer.results(items):
            rows.append(row)
    assert rows == []
    assert time.monotonic() - started < 2  # the other batches in flight gave up with it
    message = info.value.explain()
    assert message.startswith("no server answered: a:1, b:2 did not answer for 0.5 s")
    assert "--retry-budget-s 0.5" in message and "Connection refused" in message

    tls = DownTransport(message="Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL")
    with pytest.raises(TlsFailure, match="--root-certs"):
        Scorer(config.replace(retry_budget_s=60), transport=tls).score_batch(items[:2])
    assert tls.calls == 1  # not retried


def test_a_request_too_large_for_the_server_is_split_not_retried():
    from client.inputs import Item
    from client.scorer import Scorer

    class SmallLimit(DownTransport):
        def predict(self, images, attempt=0):
            self.calls += 1
            if sum(map(len, images)) > 100:
                raise RpcError("RESOURCE_EXHAUSTED", "Received message larger than max (x vs. y)")
            from client.transport import Prediction

            return Prediction([["a"]] * len(images), [[1.0]] * len(images), 1)

    config = ScoreConfig(target=["a:1"], model_name="m", max_message_mb=1)
    items = [Item(f"{i}.jpg", data=b"x" * 30) for i in range(4)] + [
        Item("big.jpg", data=b"x" * 200)
    ]
    rows = Scorer(config, transport=SmallLimit()).score_batch(items)
    assert [r["uri"] for r in rows if "error" not in r] == [f"{i}.jpg" for i in range(4)]
    (big,) = [r for r in rows if "error" in r]
    assert big["uri"] == "big.jpg" and big["error"].startswith("file is 200 bytes: too large")


def write_rows(path, rows, fmt="jsonl"):
    with ResultWriter(str(path), fmt) as writer:
        for row in rows:
            writer.write(row)


OLD_TRANSIENT = [
    {"uri": "imgs/c.jpg", "error": "UNAVAILABLE: failed to connect to all addresses (after 6 "
     "attempts)"},
    {"uri": "imgs/d.jpg", "label": "x", "error": "DEADLINE_EXCEEDED: Deadline Exceeded (after 6 "
     "attempts)"},
    {"uri": "imgs/e.jpg", "error": "RESOURCE_EXHAUSTED: rate limited (after 6 attempts)"},
]  # fmt: skip


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_drops_old_transient_rows_and_keeps_the_rest(tmp_path, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"out.{fmt}"
    kept = [
        {"uri": "imgs/a.jpg", "labels": ["x", "y"], "scores": [0.75, 0.25], "model_version": 1},
        {"uri": "./imgs/b.jpg", "error": "INVALID_ARGUMENT: not a decodable image: bad"},
        {"uri": "imgs/f.jpg", "error": "file is 9 bytes: ... over the limit"},
    ]
    write_rows(path, [kept[0], OLD_TRANSIENT[0], kept[1], *OLD_TRANSIENT[1:], kept[2]], fmt)
    mode = 0o640
    path.chmod(mode)
    done = prepare_resume(str(path), fmt)
    assert done == {str(tmp_path / "imgs" / n) for n in ("a.jpg", "b.jpg", "f.jpg")}
    assert list(read_rows(str(path), fmt)) == kept  # transient rows gone, order kept
    assert path.stat().st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    before = path.read_bytes()
    assert prepare_resume(str(path), fmt) == done and path.read_bytes() == before


def test_canonical_uris_spellings_and_symlinks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "many").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "many")
    absolute = str(tmp_path / "many" / "a.jpg")
    for spelling in ("many/a.jpg", "./many/a.jpg", absolute, "many//x/../a.jpg",
                     f"{tmp_path}/./many/a.jpg"):  # fmt: skip
        assert canonical_uri(spelling) == absolute
    assert canonical_uri("link/a.jpg") == str(tmp_path / "link" / "a.jpg")  # not resolved
    assert canonical_uri("gs://b/x/../a.jpg") == "gs://b/x/../a.jpg"  # a URL as given
    assert canonical_uri("many.tfrecord@3", "/data") == "/data/many.tfrecord@3"


def test_resume_skips_inputs_by_image_whatever_the_spelling(tmp_path, monkeypatch, good_images):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "many" / "red"
    folder.mkdir(parents=True)
    for i, p in enumerate(good_images[:4]):
        (folder / f"{i}{p.suffix}").write_bytes(p.read_bytes())
    names = sorted(str(p.relative_to(tmp_path)) for p in folder.iterdir())
    done = {canonical_uri(n) for n in names[:3]} | {canonical_uri("elsewhere/z.jpg")}
    for spelling in ("many", "./many", str(tmp_path / "many"), "many/red/../red"):
        skipped = []
        items = list(iter_items([spelling], skip=done, on_skip=skipped.append))
        assert [canonical_uri(i.uri) for i in items] == [canonical_uri(names[3])]
        assert len(skipped) == 3  # inputs actually skipped, not rows in the output


def test_an_input_that_names_nothing_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "many").mkdir()
    (tmp_path / "many" / "a.jpg").write_bytes(b"x")
    check_inputs(["many", "./many/a.jpg", "many/*.jpg", "many/**/*.jpg"])
    with pytest.raises(InputNotFound, match="no such input: 'mnay'"):
        check_inputs(["many", "mnay"])
    with pytest.raises(InputNotFound, match=r"'many/\*\.png' \(the pattern matches no file\)"):
        check_inputs(["many/*.png"])


def test_ood_outputs_asked_for_only_when_the_signature_has_them():
    from client.ood import OodOutputs, fields, from_columns
    from client.pixels import ModelMetadata
    from client.retry import RpcError

    calls = []

    def metadata(target):
        calls.append(target)
        return ModelMetadata(
            3,
            {"serving_default": {}, "serving_pixels": {}},
            {"serving_default": ["labels", "top_scores", "ood_score", "is_ood"],
             "serving_pixels": ["labels", "top_scores"]},
        )  # fmt: skip

    ood = OodOutputs(metadata)
    assert ood.wanted("serving_default", "server A") == ("ood_score", "is_ood")
    assert ood.wanted("serving_default", "server B") == ("ood_score", "is_ood")
    assert ood.wanted("serving_pixels", "server B") == ()  # a model exported before the detector
    assert calls == ["server A", "server B"]  # once per signature, from the request's server

    def unimplemented(target):
        raise RpcError("UNIMPLEMENTED", "no metadata here")

    never = OodOutputs(unimplemented)
    assert never.wanted("serving_default", "a") == ()
    assert not never.moved("serving_default", 3, ())  # remembered: not asked on every batch

    answers = [RpcError("UNAVAILABLE", "restarting"), metadata("a")]

    def flaky(target):
        answer = answers.pop(0)
        if isinstance(answer, RpcError):
            raise answer
        return answer

    later = OodOutputs(flaky)
    assert later.wanted("serving_default", "a") == ()  # the server restarts: none this time
    assert later.moved("serving_default", 3, ())  # not remembered: the next answer asks again
    assert later.wanted("serving_default", "a", fresh=True) == ("ood_score", "is_ood")
    score, flag = from_columns({"ood_score": [1.5, 90.0], "is_ood": [False, True]})
    assert fields(score, flag, 1) == {"ood_score": 90.0, "is_ood": True}
    assert from_columns({"labels": [["a"]]}) == (None, None)
    assert fields(None, None, 0) == {}


def test_atomic_files_follow_the_umask_and_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "report.json"
    previous = os.umask(0o027)
    try:
        atomic_write(str(target), b"first")
    finally:
        os.umask(previous)
    assert target.read_bytes() == b"first" and target.stat().st_mode & 0o777 == 0o640
    with pytest.raises(RuntimeError, match="midway"), atomic_file(str(target)) as out:
        out.write(b"half of a second")
        raise RuntimeError("midway")
    assert target.read_bytes() == b"first"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left
