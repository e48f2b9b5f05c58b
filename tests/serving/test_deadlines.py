"""Deadlines as TF Serving honours them: gRPC call deadlines and --rest_api_timeout_in_ms.

Against the real local server, with a tiny TF1 model: `serving_default` doubles x, `spin` counts
to max(n) in a while loop (n = 10**12 would run for hours: only a run TensorFlow cancelled at its
deadline can answer). Conditions are certain by construction, never by a race: a deadline already
passed, a spin that cannot finish, or a task seen queued (Batcher.num_enqueued_tasks, as TF
Serving's batching tests wait on NumEnqueuedTasks) in a batch that only runs when full, with its
deadline then waited out.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from servertools import free_port, start_server, wait_for

from serving import deadlines
from serving.errors import ServingError

MODEL = "deadlines"
FOREVER = 10**12  # while-loop iterations of `spin`: hours of CPU
REST_TIMEOUT_MS = 2000
TIMED_OUT = "Timed out waiting for notification"  # TensorFlow's DirectSession, run cancelled


def write_model(export_dir) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    build = v1.saved_model.utils.build_tensor_info
    predict = v1.saved_model.signature_constants.PREDICT_METHOD_NAME

    def signature(inputs, outputs):
        return v1.saved_model.signature_def_utils.build_signature_def(
            {k: build(v) for k, v in inputs.items()},
            {k: build(v) for k, v in outputs.items()},
            predict,
        )

    builder = v1.saved_model.builder.SavedModelBuilder(str(export_dir))
    with tf.Graph().as_default(), v1.Session() as sess:
        x = v1.placeholder(tf.float32, [None], name="x")
        y = tf.identity(x * 2.0, name="y")
        n = v1.placeholder(tf.int64, [None], name="n")
        _, count = tf.while_loop(
            lambda i, c: i < tf.reduce_max(n),
            lambda i, c: (i + 1, c + 1.0),
            [tf.constant(0, tf.int64), tf.constant(0.0)],
        )
        spun = tf.identity(tf.zeros_like(n, tf.float32) + count, name="spun")
        builder.add_meta_graph_and_variables(
            sess,
            [v1.saved_model.tag_constants.SERVING],
            signature_def_map={
                "serving_default": signature({"x": x}, {"y": y}),
                "spin": signature({"n": n}, {"spun": spun}),
            },
        )
    builder.save()


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("deadline-model")
    write_model(base / "1")
    return base


def _server(model_base, tmp_path_factory, batching: bool):
    argv = [
        f"--port={free_port()}",
        f"--rest_api_port={free_port()}",
        "--host=127.0.0.1",
        f"--model_name={MODEL}",
        f"--model_base_path={model_base}",
        f"--rest_api_timeout_in_ms={REST_TIMEOUT_MS}",
        "--file_system_poll_wait_seconds=0",
    ]
    if batching:  # a batch runs only when full (4 rows): a queued task waits as long as needed
        config = tmp_path_factory.mktemp("deadline-batching") / "batching.config"
        config.write_text(
            "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 600000000 }\n"
            "max_enqueued_batches { value: 10 }\nnum_batch_threads { value: 1 }\n"
        )
        argv += ["--enable_batching", f"--batching_parameters_file={config}"]
    return start_server(argv)


@pytest.fixture(scope="module")
def direct(model_base, tmp_path_factory):
    srv = _server(model_base, tmp_path_factory, batching=False)
    yield srv
    srv.stop(0)


@pytest.fixture(scope="module")
def batched(model_base, tmp_path_factory):
    srv = _server(model_base, tmp_path_factory, batching=True)
    yield srv
    srv.stop(0)


# ---------------------------------------------------------------- clients and metrics


def predict_request(signature: str, values):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    name = "x" if signature == "serving_default" else "n"
    dtype = np.float32 if name == "x" else np.int64
    request.inputs[name].CopyFrom(tf.make_tensor_proto(np.array(values, dtype)))
    return request


def stub(srv):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def rest_predict(srv, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{srv.rest_port}/v1/models/{MODEL}:predict",
        data=json.dumps(body).encode(),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def requests_with(srv, status: str) -> float:
    labels = {"model_name": MODEL, "status": status}
    value = srv.metrics.registry.get_sample_value(":tensorflow:serving:request_count_total", labels)
    return value or 0.0


def model_runs(srv) -> float:
    labels = {"model_name": MODEL, "API": "Predict", "runtime": "TF1"}
    value = srv.metrics.registry.get_sample_value(
        ":tensorflow:serving:runtime_latency_count", labels
    )
    return value or 0.0


def batched_rows(srv) -> tuple[float, float]:
    """(batches run, rows run) from processed_batch_size."""
    name = ":tensorflow:serving:batching_session:processed_batch_size"
    labels = {"model_name": MODEL}
    get = srv.metrics.registry.get_sample_value
    return (get(f"{name}_count", labels) or 0.0, get(f"{name}_sum", labels) or 0.0)


def batcher(srv):
    """The version's batcher, to see a task queued (TF Serving's tests: NumEnqueuedTasks)."""
    return srv.manager._models[MODEL].loaded[1].batcher


# ---------------------------------------------------------------- deadlines.py


def test_deadline_arithmetic():
    assert deadlines.after(None) is None
    assert deadlines.after(30 * 24 * 3600) is None  # past INT32_MAX ms: no deadline (gRPC's none)
    assert deadlines.after(2.0, now=10.0) == 12.0
    assert deadlines.timeout_ms(None, 5.0) == 0
    assert deadlines.timeout_ms(5.0001, 5.0) == 1  # never 0 (TF: none) while time is left
    assert deadlines.timeout_ms(6.5, 5.0) == 1500
    assert not deadlines.expired(None, 1e12) and deadlines.expired(5.0, 5.0)
    deadlines.check(6.0, 5.0)
    with pytest.raises(ServingError) as info:
        deadlines.check(5.0, 5.25)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "passed 250 ms earlier" in info.value.message


# ---------------------------------------------------------------- without batching


def test_rest_run_past_the_timeout_is_cancelled_with_504(direct):
    before = requests_with(direct, "DEADLINE_EXCEEDED")
    status, body = rest_predict(direct, {"signature_name": "spin", "instances": [FOREVER]})
    assert (status, body) == (504, {"error": TIMED_OUT})
    assert requests_with(direct, "DEADLINE_EXCEEDED") == before + 1
    status, body = rest_predict(direct, {"instances": [1.5]})  # a quick run is not affected
    assert (status, body) == (200, {"predictions": [3.0]})


def test_grpc_run_past_the_call_deadline_is_cancelled(direct):
    before = requests_with(direct, "DEADLINE_EXCEEDED")
    with pytest.raises(grpc.RpcError) as info:
        stub(direct).Predict(predict_request("spin", [FOREVER]), timeout=2.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the server's side ends only if TensorFlow cancelled the run (else hours of counting)
    wait_for(lambda: requests_with(direct, "DEADLINE_EXCEEDED") == before + 1, 60, what="cancel")


def test_passed_deadline_is_refused_without_running_the_model(direct):
    runs, before = model_runs(direct), requests_with(direct, "DEADLINE_EXCEEDED")
    with pytest.raises(ServingError) as info:
        direct.api.predict(predict_request("serving_default", [1.0]), deadline=time.monotonic())
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "before the model ran" in info.value.message
    assert model_runs(direct) == runs
    assert requests_with(direct, "DEADLINE_EXCEEDED") == before + 1


# ---------------------------------------------------------------- with batching


def test_batch_drops_tasks_whose_deadline_passed_in_the_queue(batched):
    """A gRPC task (3 s deadline) and a REST task (2 s timeout) wait in a batch that runs only
    when full; once both deadlines are certainly past, a 2-row request fills it: it runs alone."""
    grpc_stub = stub(batched)
    queue = batcher(batched)
    exhausted = requests_with(batched, "RESOURCE_EXHAUSTED")
    batches, rows = batched_rows(batched)
    with ThreadPoolExecutor(2) as pool:
        late_grpc = pool.submit(
            grpc_stub.Predict, predict_request("serving_default", [1.0]), timeout=3.0
        )
        late_rest = pool.submit(rest_predict, batched, {"instances": [2.0]})
        wait_for(lambda: queue.num_enqueued_tasks() == 2, 60, what="both tasks queued")
        # each deadline was set before its task was queued: now + 3 s is past both
        time.sleep(3.0)
        filler = grpc_stub.Predict(predict_request("serving_default", [5.0, 6.0]), timeout=60)
        status, body = late_rest.result()
        with pytest.raises(grpc.RpcError) as info:
            late_grpc.result()
    assert list(filler.outputs["y"].float_val) == [10.0, 12.0]
    assert (status, body) == (429, {"error": deadlines.QUEUE_TIMEOUT})  # RESOURCE_EXHAUSTED
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # the client gave up at 3 s
    wait_for(lambda: requests_with(batched, "RESOURCE_EXHAUSTED") == exhausted + 2, 60)
    assert batched_rows(batched) == (batches + 1, rows + 2)  # one run, of the filler's rows only


def test_batched_run_past_the_rest_timeout_is_cancelled_with_504(batched):
    runs = model_runs(batched)
    body = {"signature_name": "spin", "instances": [FOREVER] * 4}  # a full batch: runs at once
    assert rest_predict(batched, body) == (504, {"error": TIMED_OUT})
    assert model_runs(batched) == runs + 1


def test_passed_deadline_is_refused_before_joining_a_batch(batched):
    before = requests_with(batched, "DEADLINE_EXCEEDED")
    with pytest.raises(ServingError) as info:
        batched.api.predict(predict_request("serving_default", [1.0]), deadline=time.monotonic())
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert batcher(batched).num_enqueued_tasks() == 0
    assert requests_with(batched, "DEADLINE_EXCEEDED") == before + 1
