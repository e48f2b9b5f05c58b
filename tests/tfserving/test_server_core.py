"""tensorflow_serving/model_servers/server_core_test.cc, case by case, through the server's API.

Upstream drives ServerCore in process: ServerCore::Create(config) is a server started with that
config (a refusal is a non-zero exit with the reason on stderr), ReloadConfig(config) is
ModelService/HandleReloadConfigRequest, GetServableHandle(spec) is a Predict on that ModelSpec,
and the ServableStateMonitor's states are GetModelStatus. The fake platform upstream uses for
most cases is the real one here: model `test_model`, half_plus_two version 123 (and the two
versions 123 and 124). Cases about C++ options that no flag reaches are skipped with the reason.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tfs_harness import RPC_TIMEOUT

MODEL = "test_model"
VERSION, LARGER_VERSION, BOGUS_VERSION = 123, 124, 777
ASPIRED_VERSIONS = [VERSION, LARGER_VERSION]
RELOAD = "--allow_reload_config_requests"  # the local server's opt-in; TF Serving needs none
ROOTS = "--reload_config_base_path_roots={}"  # and where a reload may place base paths (ours)
INTERNAL = "internal C++ option: ServerCore::Options.{} has no tensorflow_model_server flag"
STATES = get_model_status_pb2.ModelVersionStatus


def model_config(base_path: Path, name: str = MODEL, extra: str = "") -> str:
    """GetTestModelServerConfigForTensorflowPlatform, as text."""
    return (
        "model_config_list {\n  config {\n"
        f'    name: "{name}"\n    base_path: "{base_path}"\n    model_platform: "tensorflow"\n'
        f"{extra}  }}\n}}\n"
    )


def two_versions(testdata: Path, labels: dict[str, int] | None = None) -> str:
    """SwitchToHalfPlusTwoWith2Versions (+ MutateModelConfig().SetLabelVersion)."""
    extra = "    model_version_policy { all {} }\n" + "".join(
        f'    version_labels {{ key: "{k}" value: {v} }}\n' for k, v in (labels or {}).items()
    )
    return model_config(testdata / "saved_model_half_plus_two_2_versions", extra=extra)


class Core:
    """A started server seen as ServerCore: reload, handles, states."""

    def __init__(self, server):
        self.server = server
        self.channel = grpc.insecure_channel(server.grpc)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def reload_config(self, text: str) -> grpc.StatusCode:
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(text, request.config)
        try:
            response = self.models.HandleReloadConfigRequest(request, timeout=RPC_TIMEOUT)
        except grpc.RpcError as error:
            return error.code(), error.details()
        return grpc.StatusCode(_code(response.status.error_code)), response.status.error_message

    def servable_version(self, version: int | None = None, label: str = "", name: str = MODEL):
        """GetServableHandle(spec).id().version, by a Predict on half_plus_two."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        if label:
            request.model_spec.version_label = label
        request.inputs["x"].dtype = types_pb2.DT_FLOAT
        request.inputs["x"].float_val.append(2.0)
        request.inputs["x"].tensor_shape.dim.add().size = 1
        return self.predictions.Predict(request, RPC_TIMEOUT).model_spec.version.value

    def states(self, name: str = MODEL) -> dict[int, tuple[str, int, str]]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        response = self.models.GetModelStatus(request, RPC_TIMEOUT)
        return {
            s.version: (STATES.State.Name(s.state), s.status.error_code, s.status.error_message)
            for s in response.model_version_status
        }

    def available(self, name: str = MODEL) -> list[int]:
        try:
            return sorted(v for v, s in self.states(name).items() if s[0] == "AVAILABLE")
        except grpc.RpcError:
            return []

    def wait_for(self, predicate, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)


def _code(value: int) -> int:
    return next(c for c in grpc.StatusCode if c.value[0] == value)


@pytest.fixture
def create(launcher, tmp_path, testdata):
    """CreateServerCore(config[, flags]): a server of its own for the test. The local server is
    told that reloads may use any of upstream's test models (TF Serving allows any path)."""
    local = (RELOAD, ROOTS.format(testdata))

    def start(text: str, *flags: str) -> Core:
        path = tmp_path / f"models-{len(list(tmp_path.iterdir()))}.config"
        path.write_text(text)
        return Core(launcher.run_server([f"--model_config_file={path}", *flags], local_args=local))

    return start


@pytest.fixture
def refuse(launcher, tmp_path):
    """CreateServerCore(config) that must fail: (exit code, stderr)."""

    def run(text: str, *flags: str, cwd: Path | None = None) -> tuple[int | None, str]:
        path = tmp_path / "refused.config"
        path.write_text(text)
        return launcher.run_to_exit([f"--model_config_file={path}", *flags], cwd=cwd)

    return run


@pytest.fixture(scope="module")
def half_plus_two(testdata) -> Path:
    return testdata / "saved_model_half_plus_two_cpu"


# ---------------------------------------------------------------- the cases


@pytest.mark.skip(reason=INTERNAL.format("pre_load_hook"))
def test_ServerCoreTest_PreLoadHook():
    """A hook called with each ServableId before it loads."""


def test_ServerCoreTest_CreateWaitsTillModelsAvailable(create, half_plus_two):
    core = create(model_config(half_plus_two))
    assert core.available() == [VERSION]
    assert core.servable_version(VERSION) == VERSION
    state, code, _ = core.states()[VERSION]
    assert (state, code) == ("AVAILABLE", 0)


def test_ServerCoreTest_ReloadConfigWaitsTillModelsAvailable(create, half_plus_two):
    core = create("model_config_list {}\n")
    code, message = core.reload_config(model_config(half_plus_two))
    assert code == grpc.StatusCode.OK, message
    assert core.available() == [VERSION]  # no waiting: the reload returned once loaded


def test_ServerCoreTest_ReloadConfigUnloadsModels(create, half_plus_two):
    core = create(model_config(half_plus_two))
    assert core.available()
    code, message = core.reload_config("model_config_list {}\n")
    assert code == grpc.StatusCode.OK, message
    core.wait_for(lambda: core.states()[VERSION][0] == "END", "version 123 in state END")
    assert list(core.states()) == [VERSION]


def test_ServerCoreTest_ReloadConfigHandlesLoadingAPreviouslyUnloadedModel(create, half_plus_two):
    core = create(model_config(half_plus_two))
    assert core.reload_config("model_config_list {}\n")[0] == grpc.StatusCode.OK
    core.wait_for(lambda: core.states()[VERSION][0] == "END", "version 123 in state END")
    code, message = core.reload_config(model_config(half_plus_two))
    assert code == grpc.StatusCode.OK, message
    assert core.available() == [VERSION]


def test_ServerCoreTest_ReloadConfigChangeModelBasePath(create, half_plus_two, testdata):
    one_version = model_config(half_plus_two)
    core = create(one_version)
    assert core.available() == [VERSION]
    assert core.reload_config(two_versions(testdata))[0] == grpc.StatusCode.OK
    core.wait_for(lambda: core.servable_version() == LARGER_VERSION, "version 124 served")
    assert core.reload_config(one_version)[0] == grpc.StatusCode.OK
    core.wait_for(lambda: core.servable_version() == VERSION, "version 123 served again")


def test_RelativePathsServerCoreTest_AbsolutePathSucceeds(create, half_plus_two):
    assert create(model_config(half_plus_two)).available() == [VERSION]


def test_RelativePathsServerCoreTest_RelativePathFails(refuse, half_plus_two):
    relative = model_config(Path(half_plus_two.name), name=f"{MODEL}_relative")
    code, stderr = refuse(relative, cwd=half_plus_two.parent)
    assert code not in (0, None), stderr
    assert "to have an absolute path or URI" in stderr


@pytest.mark.skip(reason=INTERNAL.format("model_config_list_root_dir"))
def test_RelativePathsServerCoreTest_AbsoluteAndRelativePathsWithOptionsSucceed():
    """Relative base paths resolved against model_config_list_root_dir."""


@pytest.mark.skip(reason=INTERNAL.format("model_config_list_root_dir"))
def test_RelativePathsServerCoreTest_AbsolutePathWithEmptyPathFails():
    """An empty model_config_list_root_dir refused."""


@pytest.mark.skip(reason=INTERNAL.format("model_config_list_root_dir"))
def test_RelativePathsServerCoreTest_RelativePathWithOptionsSucceeds():
    """A relative base path under model_config_list_root_dir."""


def test_RelativePathsServerCoreTest_MixedAbsoluteRelativeFails(refuse, half_plus_two):
    absolute = model_config(half_plus_two)
    relative_entry = model_config(Path(half_plus_two.name), name=f"{MODEL}_relative")
    mixed = absolute.rstrip().rstrip("}") + relative_entry.split("{", 1)[1]
    code, stderr = refuse(mixed, cwd=half_plus_two.parent)
    assert code not in (0, None), stderr
    assert "to have an absolute path or URI" in stderr


def test_ServerCoreTest_ErroringModel(refuse, testdata):
    """Upstream injects a load error; here the model that cannot load is bad_half_plus_two
    (a SessionBundle, no SavedModel), tried once (--max_num_load_retries=0)."""
    code, stderr = refuse(model_config(testdata / "bad_half_plus_two"), "--max_num_load_retries=0")
    assert code not in (0, None), stderr
    assert "1 servable(s) did not become available" in stderr


def test_ServerCoreTest_IllegalReconfigurationToCustomConfig(create, half_plus_two):
    core = create(model_config(half_plus_two))
    request = model_management_pb2.ReloadConfigRequest()
    request.config.custom_model_config.SetInParent()
    with pytest.raises(grpc.RpcError) as info:
        core.models.HandleReloadConfigRequest(request, timeout=RPC_TIMEOUT)
    # model_service_impl.cc refuses it before ServerCore sees it (ServerCore would say
    # "Cannot transition to requested config")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Only ModelConfigList is currently supported" in info.value.details()


@pytest.mark.skip(reason="out of scope: custom_model_config (custom model platforms)")
def test_ServerCoreTest_IllegalReconfigurationFromCustomConfig():
    """A server started with a custom config refuses a ModelConfigList."""


def test_ServerCoreTest_IllegalConfigModelTypeAndPlatformSet(refuse, half_plus_two):
    both = model_config(half_plus_two, extra="    model_type: TENSORFLOW\n")
    code, stderr = refuse(both)
    assert code not in (0, None), stderr
    assert "Illegal setting both" in stderr


def test_ServerCoreTest_DeprecatedModelTypeConfig(create, half_plus_two):
    text = model_config(half_plus_two).replace(
        'model_platform: "tensorflow"', "model_type: TENSORFLOW"
    )
    assert create(text).available() == [VERSION]


def test_ServerCoreTest_DuplicateModelNameInConfig(refuse, half_plus_two):
    one = model_config(half_plus_two)
    duplicate = one.rstrip().rstrip("}") + one.split("{", 1)[1]
    code, stderr = refuse(duplicate)
    assert code not in (0, None), stderr


def test_ServerCoreTest_UnknownModelPlatform(refuse, half_plus_two):
    text = model_config(half_plus_two).replace('"tensorflow"', '"not_a_known_platform"')
    code, stderr = refuse(text)
    assert code not in (0, None), stderr


FAKE_PLATFORMS = (
    "out of scope: custom model platforms (fake source adapters, --platform_config_file)"
)


@pytest.mark.skip(reason=FAKE_PLATFORMS)
def test_ServerCoreTest_MultiplePlatforms():
    """Two fake platforms, one model each."""


@pytest.mark.skip(reason=FAKE_PLATFORMS)
def test_ServerCoreTest_MultiplePlatformsWithConfigChange():
    """Three fake platforms, models swapped by a reload."""


@pytest.mark.skip(reason=FAKE_PLATFORMS)
def test_ServerCoreTest_IllegalToChangeModelPlatform():
    """A reload that moves a model to another fake platform is refused."""


@pytest.mark.skip(reason="out of scope: request logging (ModelConfig.logging_config)")
def test_ServerCoreTest_RequestLoggingOff():
    """No logger without a logging_config."""


@pytest.mark.skip(reason="out of scope: request logging (ModelConfig.logging_config)")
def test_ServerCoreTest_RequestLoggingOn():
    """Requests sampled into a log collector."""


def test_ServerCoreTest_ModelSpecMultipleVersionsAvailable(create, testdata):
    core = create(two_versions(testdata))
    assert core.available() == ASPIRED_VERSIONS
    assert core.servable_version() == LARGER_VERSION
    assert core.servable_version(VERSION) == VERSION
    code, message = core.reload_config(two_versions(testdata, {"A": VERSION, "B": LARGER_VERSION}))
    assert code == grpc.StatusCode.OK, message
    assert core.servable_version(label="A") == VERSION
    assert core.servable_version(label="B") == LARGER_VERSION
    with pytest.raises(grpc.RpcError) as info:
        core.servable_version(label="nonexistent label")
    assert "Unrecognized servable version label" in info.value.details()


def test_ServerCoreTest_AssignLabelToUnavailableVersion(create, testdata):
    core = create(two_versions(testdata))
    assert core.available() == ASPIRED_VERSIONS
    code, message = core.reload_config(two_versions(testdata, {"nice try": BOGUS_VERSION}))
    assert code != grpc.StatusCode.OK
    assert "not currently available for inference" in message


def test_ServerCoreTest_AssignLabelToUnavailableVersionAllowed(create, testdata):
    core = create(two_versions(testdata), "--allow_version_labels_for_unavailable_models")
    assert core.available() == ASPIRED_VERSIONS
    code, message = core.reload_config(two_versions(testdata, {"nice try": BOGUS_VERSION}))
    assert code == grpc.StatusCode.OK, message


def test_ServerCoreTest_AssignExistingLabelToUnavailableVersionDisallowed(create, testdata):
    core = create(two_versions(testdata), "--allow_version_labels_for_unavailable_models")
    assert core.available() == ASPIRED_VERSIONS
    labels = {"A": VERSION, "B": LARGER_VERSION}
    assert core.reload_config(two_versions(testdata, labels))[0] == grpc.StatusCode.OK
    code, message = core.reload_config(two_versions(testdata, {**labels, "A": BOGUS_VERSION}))
    assert code != grpc.StatusCode.OK
    assert "not currently available for inference" in message


@pytest.mark.skip(reason=INTERNAL.format("force_allow_any_version_labels_for_unavailable_models"))
def test_ServerCoreTest_AssignExistingLabelToUnavailableVersionAllowed():
    """An existing label moved to an unavailable version when forced."""


@pytest.mark.skip(reason=INTERNAL.format("allow_version_labels"))
def test_ServerCoreTest_VersionLabelsNotAllowed():
    """Labels refused when ServerCore is built without them (the server always allows them)."""


@pytest.mark.skip(reason=INTERNAL.format("storage_path_prefix"))
def test_ServerCoreTest_StoragePathPrefixOption():
    """Base paths relative to a storage path prefix."""
