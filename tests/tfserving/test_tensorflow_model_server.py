"""tensorflow_serving/model_servers/tensorflow_model_server_test.py, case by case.

Each test is named test_<upstream name>; the requests and the expected responses are upstream's.
Servers are started with RunServer's flags (tfs_harness.py) and shared by their flags.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tfs_expected import HALF_PLUS_TWO_MODEL_METADATA
from tfs_harness import RPC_TIMEOUT, call_rest, sorted_object
from tfs_models import VERSION

DEFAULT_SIGNATURE = "serving_default"


# ---------------------------------------------------------------- upstream's helpers


def verify_predict_request(
    address: str,
    expected_output: float,
    expected_version: int,
    model_name: str = "default",
    specify_output: bool = True,
    batch_input: bool = False,
    signature_name: str = DEFAULT_SIGNATURE,
) -> None:
    """VerifyPredictRequest: x = [2.0] (shape [1], or [1, 1] with batch_input) -> y."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if batch_input:
        request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    with grpc.insecure_channel(address) as channel:
        result = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, RPC_TIMEOUT
        )
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert len(result.outputs["y"].float_val) == 1
    assert result.outputs["y"].float_val[0] == expected_output
    verify_model_spec(result.model_spec, model_name, signature_name, expected_version)


def verify_model_spec(spec, name: str, signature_name: str, version: int) -> None:
    assert spec.name == name
    assert spec.signature_name == signature_name
    assert spec.version.value == version


def model_version(model_path: Path) -> int:
    """_GetModelVersion: the one integer directory under the base path."""
    return next(int(p.name) for p in model_path.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def half_plus_two(testdata) -> Path:
    return testdata / "saved_model_half_plus_two_cpu"


@pytest.fixture(scope="module")
def half_plus_three(testdata) -> Path:
    return testdata / "saved_model_half_plus_three"


@pytest.fixture(scope="module")
def half_plus_two_tf2(testdata) -> Path:
    return testdata / "saved_model_half_plus_two_tf2_cpu"


@pytest.fixture(scope="module")
def default_server(launcher, half_plus_two):
    """RunServer('default', saved_model_half_plus_two_cpu): most cases' server."""
    return launcher.run_server(["--model_name=default", f"--model_base_path={half_plus_two}"])


@pytest.fixture(scope="module")
def good_model_config(testdata, half_plus_two, half_plus_three, tmp_path_factory) -> Path:
    """__BuildModelConfigFile: good_model_config.txt with the test directories filled in."""
    text = (testdata / "good_model_config.txt").read_text()
    text = text.replace("${TEST_HALF_PLUS_TWO_DIR}", str(half_plus_two))
    text = text.replace("${TEST_HALF_PLUS_THREE_DIR}", str(half_plus_three))
    path = tmp_path_factory.mktemp("config") / "good_model_config.conf"
    path.write_text(text)
    return path


def prediction_stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


# ---------------------------------------------------------------- the cases


def test_testGetModelStatus(default_server):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    with grpc.insecure_channel(default_server.grpc) as channel:
        result = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, RPC_TIMEOUT
        )
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0


def test_testGetModelMetadata(default_server, half_plus_two):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.append("signature_def")
    with grpc.insecure_channel(default_server.grpc) as channel:
        result = prediction_stub(channel).GetModelMetadata(request, RPC_TIMEOUT)
    assert result.model_spec.name == "default"
    assert result.model_spec.version.value == model_version(half_plus_two)
    assert len(result.metadata) == 1
    assert "signature_def" in result.metadata


def _x_is_two(request, signature: str):
    """A Classify or Regress request to model "default" with one example, x = 2.0."""
    request.model_spec.name = "default"
    request.model_spec.signature_name = signature
    request.input.example_list.examples.add().features.feature["x"].float_list.value.extend([2.0])
    return request


def _test_classify(launcher, model_path: Path) -> None:
    address = launcher.run_server(["--model_name=default", f"--model_base_path={model_path}"]).grpc
    request = _x_is_two(classification_pb2.ClassificationRequest(), "classify_x_to_y")
    with grpc.insecure_channel(address) as channel:
        result = prediction_stub(channel).Classify(request, RPC_TIMEOUT)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    verify_model_spec(result.model_spec, "default", "classify_x_to_y", model_version(model_path))


def test_testClassify(launcher, half_plus_two):
    _test_classify(launcher, half_plus_two)


def test_testClassifyTf2(launcher, half_plus_two_tf2):
    _test_classify(launcher, half_plus_two_tf2)


def _test_regress(launcher, model_path: Path) -> None:
    address = launcher.run_server(["--model_name=default", f"--model_base_path={model_path}"]).grpc
    request = _x_is_two(regression_pb2.RegressionRequest(), "regress_x_to_y")
    with grpc.insecure_channel(address) as channel:
        result = prediction_stub(channel).Regress(request, RPC_TIMEOUT)
    assert len(result.result.regressions) == 1
    assert result.result.regressions[0].value == 3.0
    verify_model_spec(result.model_spec, "default", "regress_x_to_y", model_version(model_path))


def test_testRegress(launcher, half_plus_two):
    _test_regress(launcher, half_plus_two)


def test_testRegressTf2(launcher, half_plus_two_tf2):
    _test_regress(launcher, half_plus_two_tf2)


def _test_multi_inference(launcher, model_path: Path) -> None:
    address = launcher.run_server(["--model_name=default", f"--model_base_path={model_path}"]).grpc
    request = inference_pb2.MultiInferenceRequest()
    request.tasks.add().model_spec.name = "default"
    request.tasks[0].model_spec.signature_name = "regress_x_to_y"
    request.tasks[0].method_name = "tensorflow/serving/regress"
    request.tasks.add().model_spec.name = "default"
    request.tasks[1].model_spec.signature_name = "classify_x_to_y"
    request.tasks[1].method_name = "tensorflow/serving/classify"
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.extend([2.0])
    with grpc.insecure_channel(address) as channel:
        result = prediction_stub(channel).MultiInference(request, RPC_TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i in range(2):
        verify_model_spec(
            result.results[i].model_spec,
            request.tasks[i].model_spec.name,
            request.tasks[i].model_spec.signature_name,
            model_version(model_path),
        )


def test_testMultiInference(launcher, half_plus_two):
    _test_multi_inference(launcher, half_plus_two)


def test_testMultiInferenceTf2(launcher, half_plus_two_tf2):
    _test_multi_inference(launcher, half_plus_two_tf2)


def test_testPredictSavedModel(default_server, half_plus_two):
    """_TestPredict: with and without output_filter."""
    version = model_version(half_plus_two)
    verify_predict_request(default_server.grpc, expected_output=3.0, expected_version=version)
    verify_predict_request(
        default_server.grpc, expected_output=3.0, specify_output=False, expected_version=version
    )


def test_testGoodModelConfig(launcher, good_model_config, half_plus_two, half_plus_three):
    address = launcher.run_server([f"--model_config_file={good_model_config}"]).grpc
    for specify_output in (True, False):
        verify_predict_request(
            address,
            model_name="half_plus_two",
            expected_output=3.0,
            specify_output=specify_output,
            expected_version=model_version(half_plus_two),
        )
        verify_predict_request(
            address,
            model_name="half_plus_three",
            expected_output=4.0,
            specify_output=specify_output,
            expected_version=model_version(half_plus_three),
        )


def test_testBadModelConfig(launcher, testdata):
    code, stderr = launcher.run_to_exit(
        [f"--model_config_file={testdata / 'bad_model_config.txt'}"]
    )
    assert code not in (0, None), stderr
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in stderr


BASE_CONFIG = """
model_config_list: {{
  config: {{
    name: "{name}",
    base_path: "{model_path}",
    model_platform: "tensorflow"
  }}
}}
"""


def test_testModelConfigReload(launcher, half_plus_two, half_plus_three, tmp_path):
    config_path = tmp_path / "model_config.txt"
    config_path.write_text(BASE_CONFIG.format(name="half_plus_two", model_path=half_plus_two))
    address = launcher.run_server(
        [f"--model_config_file={config_path}", "--model_config_file_poll_wait_seconds=1"]
    ).grpc
    verify_predict_request(
        address,
        model_name="half_plus_two",
        expected_output=3.0,
        specify_output=False,
        expected_version=model_version(half_plus_two),
    )
    config_path.write_text(BASE_CONFIG.format(name="half_plus_three", model_path=half_plus_three))
    deadline = time.monotonic() + 10  # upstream sleeps 10 s; here: up to 10 s
    while True:
        try:
            verify_predict_request(
                address,
                model_name="half_plus_three",
                expected_output=4.0,
                specify_output=False,
                expected_version=model_version(half_plus_three),
            )
            break
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def test_testModelConfigReloadWithZeroPollPeriod(
    launcher, half_plus_two, half_plus_three, tmp_path
):
    config_path = tmp_path / "model_config.txt"
    config_path.write_text(BASE_CONFIG.format(name="half_plus_two", model_path=half_plus_two))
    poll_period = 0
    address = launcher.run_server(
        [
            f"--model_config_file={config_path}",
            f"--model_config_file_poll_wait_seconds={poll_period}",
        ]
    ).grpc
    verify_predict_request(
        address,
        model_name="half_plus_two",
        expected_output=3.0,
        specify_output=False,
        expected_version=model_version(half_plus_two),
    )
    config_path.write_text(BASE_CONFIG.format(name="half_plus_three", model_path=half_plus_three))
    time.sleep(poll_period + 1)
    verify_predict_request(
        address,
        model_name="half_plus_two",
        expected_output=3.0,
        specify_output=False,
        expected_version=model_version(half_plus_three),
    )


def test_testGoodGrpcChannelArgs(launcher, half_plus_two):
    address = launcher.run_server(
        ["--model_name=default", f"--model_base_path={half_plus_two}"],
        channel_args="grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
    ).grpc
    verify_predict_request(
        address, expected_output=3.0, specify_output=False, expected_version=VERSION
    )


def test_testClassifyREST(default_server):
    url = f"http://{default_server.rest}/v1/models/default:classify"
    response = call_rest(url, {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert json.loads(response.decode()) == {"results": [[["", 3.0]]]}


def test_testRegressREST(default_server):
    url = f"http://{default_server.rest}/v1/models/default:regress"
    response = call_rest(url, {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert json.loads(response.decode()) == {"results": [3.0]}


def test_testPredictREST(default_server):
    url = f"http://{default_server.rest}/v1/models/default:predict"
    response = call_rest(url, {"instances": [2.0, 3.0, 4.0]})
    assert json.loads(response.decode()) == {"predictions": [3.0, 3.5, 4.0]}


def test_testPredictColumnarREST(default_server):
    url = f"http://{default_server.rest}/v1/models/default:predict"
    response = call_rest(url, {"inputs": [2.0, 3.0, 4.0]})
    assert json.loads(response.decode()) == {"outputs": [3.0, 3.5, 4.0]}


def test_testGetStatusREST(default_server):
    response = call_rest(f"http://{default_server.rest}/v1/models/default")
    assert json.loads(response.decode()) == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def test_testGetModelMetadataREST(default_server):
    response = call_rest(f"http://{default_server.rest}/v1/models/default/metadata")
    assert sorted_object(json.loads(response.decode())) == sorted_object(
        HALF_PLUS_TWO_MODEL_METADATA
    )


def test_testPrometheusEndpoint(launcher, half_plus_two, testdata):
    server = launcher.run_server(
        [
            "--model_name=default",
            f"--model_base_path={half_plus_two}",
            f"--monitoring_config_file={testdata / 'monitoring_config.txt'}",
        ]
    )
    response = call_rest(f"http://{server.rest}/monitoring/prometheus/metrics")
    assert "# TYPE" in response.decode("utf-8")


def test_testPredictUDS(default_server):
    verify_predict_request(
        f"unix:{default_server.socket_path}",
        expected_output=3.0,
        specify_output=False,
        expected_version=VERSION,
    )


@pytest.mark.skip(reason="out of scope: TFLite models (--prefer_tflite_model)")
def test_testPredictOnTfLite():
    """Upstream serves saved_model_half_plus_two_tflite/model.tflite."""


@pytest.mark.skip(reason="out of scope: TFLite models (--prefer_tflite_model)")
def test_testPredictWithSignatureDefOnTfLite():
    """Upstream serves saved_model_half_plus_two_tflite_with_sigdef/model.tflite."""


def _tf2_base(tmp_path_factory, name: str) -> Path:
    base = tmp_path_factory.mktemp(name)
    return base, base / "00000123"


def test_test_tf_saved_model_save(launcher, tmp_path_factory):
    import tensorflow as tf

    base_path, export_path = _tf2_base(tmp_path_factory, "tf_saved_model_save")
    root = tf.train.Checkpoint()
    root.v1 = tf.Variable(3.0)
    root.v2 = tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    to_save = root.f.get_concrete_function(tf.TensorSpec(None, tf.float32))
    tf.saved_model.save(root, str(export_path), to_save)
    address = launcher.run_server(["--model_name=default", f"--model_base_path={base_path}"]).grpc
    verify_predict_request(
        address, expected_output=12.0, specify_output=False, expected_version=123
    )


def test_test_tf_saved_model_save_multiple_signatures(launcher, tmp_path_factory):
    import tensorflow as tf

    base_path, export_path = _tf2_base(tmp_path_factory, "tf_saved_model_save_multi")
    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": 1.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    root.g = tf.function(lambda x: {"y": 2.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    tf.saved_model.save(
        root,
        str(export_path),
        signatures={DEFAULT_SIGNATURE: root.f, "custom_signature_key": root.g},
    )
    address = launcher.run_server(["--model_name=default", f"--model_base_path={base_path}"]).grpc
    verify_predict_request(
        address, expected_output=2.0, expected_version=123, signature_name="custom_signature_key"
    )
    verify_predict_request(address, expected_output=1.0, expected_version=123)


def test_test_sequential_keras_saved_model_save(launcher, tmp_path_factory):
    import keras
    import tensorflow as tf

    model = keras.Sequential(
        [keras.Input(dtype="float32", shape=(1,), name="x"), keras.layers.Lambda(lambda x: x)]
    )
    base_path, export_path = _tf2_base(tmp_path_factory, "keras_sequential_saved_model_save")
    if hasattr(model, "export"):  # Keras 3: tf.saved_model.save(model) is model.export
        model.export(str(export_path), format="tf_saved_model", verbose=False)
    else:
        tf.saved_model.save(model, str(export_path))
    address = launcher.run_server(["--model_name=default", f"--model_base_path={base_path}"]).grpc
    request_input = _only_input_alias(address)
    verify_predict_request_named(address, request_input, expected_output=2.0, expected_version=123)


def _only_input_alias(address: str) -> str:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "default"
    with grpc.insecure_channel(address) as channel:
        result = prediction_stub(channel).GetModelMetadata(request, RPC_TIMEOUT)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    result.metadata["signature_def"].Unpack(signatures)
    (alias,) = signatures.signature_def[DEFAULT_SIGNATURE].inputs
    return alias


def verify_predict_request_named(address, alias, expected_output, expected_version):
    """VerifyPredictRequest(batch_input=True, specify_output=False), input named as exported."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = DEFAULT_SIGNATURE
    request.inputs[alias].dtype = types_pb2.DT_FLOAT
    request.inputs[alias].float_val.append(2.0)
    request.inputs[alias].tensor_shape.dim.add().size = 1
    request.inputs[alias].tensor_shape.dim.add().size = 1
    with grpc.insecure_channel(address) as channel:
        result = prediction_stub(channel).Predict(request, RPC_TIMEOUT)
    (output,) = result.outputs.values()
    assert output.dtype == types_pb2.DT_FLOAT
    assert list(output.float_val) == [expected_output]
    verify_model_spec(result.model_spec, "default", DEFAULT_SIGNATURE, expected_version)


DISTRAT_SAVE = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
strategy = tf.distribute.MirroredStrategy(devices=("/cpu:0", "/cpu:1"))
with strategy.scope():
    model = keras.Sequential([
        keras.Input(dtype="float32", shape=(1,), name="x"),
        keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros"),
        keras.layers.Lambda(lambda x: x, name="y"),
    ])
assert strategy.num_replicas_in_sync == 2
if hasattr(model, "export"):  # Keras 3: tf.saved_model.save(model) is model.export
    model.export(sys.argv[1], format="tf_saved_model", verbose=False)
else:
    tf.saved_model.save(model, sys.argv[1])
"""


def test_test_distrat_sequential_keras_saved_model_save(launcher, tmp_path_factory):
    """Saved in a process of its own: SetVirtualCpus(2) must come before TensorFlow starts,
    and this test session's TensorFlow has started."""
    base_path, export_path = _tf2_base(
        tmp_path_factory, "keras_sequential_saved_model_save_distrat"
    )
    saved = subprocess.run(
        [sys.executable, "-c", DISTRAT_SAVE, str(export_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert saved.returncode == 0, saved.stderr[-3000:]
    address = launcher.run_server(["--model_name=default", f"--model_base_path={base_path}"]).grpc
    request_input = _only_input_alias(address)
    verify_predict_request_named(address, request_input, expected_output=2.0, expected_version=123)


@pytest.mark.skip(reason="out of scope: the TensorFlow profiler service (--enable_profiler)")
def test_test_profiler_service_with_valid_trace_request():
    """profiler_client.trace against the gRPC port while REST predicts run."""


@pytest.mark.skip(reason="out of scope: custom ops (TensorFlow Text's tf_text_regression model)")
def test_test_tf_text():
    """Upstream serves testdata/tf_text_regression, which needs TF Text's ops."""
