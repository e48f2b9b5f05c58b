"""bench/ops_drill.py's drills, reduced (4 clients, a second or two of load), on the session's tiny
model in an in-process server with batching: the script keeps working, and what its figures
claim holds here too. A hot swap and two broken versions under load fail no request; every bad
request of the corpus is refused with a message, the same way on a second pass, and a good image
is still answered with the same scores. The figures are the drill's (docs/reliability.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from servertools import copy_version, free_port, start_server
from testconfig import MODEL

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import ops_drill  # noqa: E402
from ops_requests import Target, as_expected, bad_requests  # noqa: E402


@pytest.fixture(scope="module")
def target(exported, tmp_path_factory):
    """One server for both tests (the corpus does not care which version is served)."""
    tmp_path = tmp_path_factory.mktemp("ops-drill")
    base = tmp_path / MODEL
    copy_version(exported.path, base, 1)
    batching = tmp_path / "batching.config"
    batching.write_text(
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1000 }\n"
        "num_batch_threads { value: 2 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8\n"
    )
    server = start_server(
        [
            f"--port={free_port()}",
            f"--rest_api_port={free_port()}",
            "--host=127.0.0.1",
            f"--model_name={MODEL}",
            f"--model_base_path={base}",
            "--file_system_poll_wait_seconds=1",
            "--enable_batching",
            f"--batching_parameters_file={batching}",
        ]
    )
    rest = f"http://127.0.0.1:{server.rest_port}"
    yield Target(f"127.0.0.1:{server.grpc_port}", rest, MODEL, base, os.getpid())
    server.stop(0)


def test_swap_and_broken_versions_under_load_fail_no_request(target, images):
    pictures = list(images.values())
    swap = ops_drill.hot_swap_drill(target, 4, pictures, 0.5, 0.5, timeout=60)
    assert swap["failed"] == {} and swap["requests"] > 0
    assert (swap["from_version"], swap["to_version"]) == (1, 2)
    assert swap["before"]["versions"].keys() == {"1"} and swap["after"]["versions"].get("2")
    assert swap["rename_to_first_new_answer_s"] > 0

    broken = ops_drill.broken_version_drill(target, 4, pictures, 0.5, 0.5, timeout=60)
    assert broken["failed"] == {} and broken["requests"] > 0
    assert broken["versions"].keys() == {"2"} and broken["served_after"] == 2
    assert [(b["version"], b["state"]) for b in broken["broken"]] == [(3, "END"), (4, "END")]
    for version in broken["broken"]:
        assert version["error_code"] != "OK" and "load attempt 1 failed" in version["error_message"]


def test_every_bad_request_is_refused_with_a_message_and_the_server_still_answers(target, images):
    result = bad_requests(target, images["red"], repeats=1, big_batch=20)
    cases = result["cases"]
    assert {c["protocol"] for c in cases} == {"grpc", "rest"} and len(cases) >= 30
    assert [c for c in cases if not as_expected(c)] == []
    # Over this server's max_batch_size (8): the batch is refused too.
    assert all(c["status"] not in ("OK", "HTTP 200") for c in cases if c["expect"] != "answered")
    assert result["answers_that_changed_between_passes"] == 0
    assert result["good_image_same_scores_after"]
    assert len(result["rss_mb_after_each_pass"]) == 2
