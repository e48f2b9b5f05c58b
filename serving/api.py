"""The server's API independent of transport: gRPC and REST both call these, and record metrics.

The prediction APIs take the request's deadline (time.monotonic(), None: none; the transport
derives it, serving/deadlines.py) and hand it to the model runs of the request."""

from __future__ import annotations

import contextlib
import time

from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
)

from serving import inference, json_request
from serving.config import ReloadPolicy
from serving.errors import ServingError, from_tf_error, invalid
from serving.manager import ModelManager
from serving.metrics import Metrics

SIGNATURE_DEF = "signature_def"
STATE_NUMBERS = get_model_status_pb2.ModelVersionStatus.State


def spec_target(spec) -> tuple[int | None, str]:
    """ModelSpec -> (version or None, label or "")."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, ""
    if choice == "version_label":
        return None, spec.version_label
    return None, ""


class ServingApi:
    def __init__(self, manager: ModelManager, metrics: Metrics, reload_policy=None):
        self.manager = manager
        self.metrics = metrics
        self.reload_policy = reload_policy if reload_policy is not None else ReloadPolicy()

    @contextlib.contextmanager
    def _call(self, model, api, entrypoint, spec=None, version=None, label="", deadline=None):
        """Resolve the servable, time the call, count it by status; errors pass through."""
        start = time.perf_counter()
        served_version = None
        status = "OK"
        try:
            if spec is not None:
                version, label = spec_target(spec)
            with self.manager.handle(model, version, label, deadline) as handle:
                served_version = handle.servable.version
                yield handle
        except ServingError as exc:
            status = exc.code.name
            raise
        except Exception as exc:  # a TensorFlow error counts by its code, as TF Serving's
            status = from_tf_error(exc).code.name if hasattr(exc, "error_code") else "UNKNOWN"
            raise
        finally:
            self.metrics.record_request(
                model, served_version, api, entrypoint, status, (time.perf_counter() - start) * 1e6
            )

    # ------------------------------------------------------------ prediction APIs

    def predict(self, request, entrypoint="GRPC", deadline=None):
        spec = request.model_spec
        with self._call(spec.name, "predict", entrypoint, spec, deadline=deadline) as h:
            return inference.predict(h.servable, request, h.run)

    def predict_json(self, name, version, label, doc, entrypoint="REST", deadline=None):
        """REST predict: JSON doc -> (outputs, row|columnar) using the signature's TensorInfos."""
        with self._call(name, "predict", entrypoint, None, version, label, deadline) as h:
            signature = json_request.signature_name(doc)
            key = signature or inference.DEFAULT_SIGNATURE
            if key not in h.servable.signatures:
                raise invalid(f'Serving signature name: "{key}" not found in signature def')
            infos = h.servable.signatures[key].inputs
            inputs, form = json_request.predict_inputs(doc, infos)
            _, outputs = inference.predict_arrays(h.servable, signature, inputs, [], h.run)
            return outputs, form

    def classify(self, request, entrypoint="GRPC", deadline=None):
        spec = request.model_spec
        with self._call(spec.name, "classify", entrypoint, spec, deadline=deadline) as h:
            return inference.classify(h.servable, request, h.run)

    def regress(self, request, entrypoint="GRPC", deadline=None):
        spec = request.model_spec
        with self._call(spec.name, "regress", entrypoint, spec, deadline=deadline) as h:
            return inference.regress(h.servable, request, h.run)

    def multi_inference(self, request, entrypoint="GRPC", deadline=None):
        if not request.tasks:
            raise invalid("Found no tasks in MultiInferenceRequest.")
        spec = request.tasks[0].model_spec
        with self._call(spec.name, "multi_inference", entrypoint, spec, deadline=deadline) as h:
            return inference.multi_inference(h.servable, request, h.run)

    # ------------------------------------------------------------ metadata and status

    def metadata(self, request, entrypoint="GRPC"):
        """GetModelMetadata: the SignatureDefMap packed in an Any (get_model_metadata_impl.cc)."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF:
                raise invalid(f"Metadata field {field} is not supported")
        spec = request.model_spec
        version, label = spec_target(spec)
        with self.manager.handle(spec.name, version, label) as h:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, value in h.servable.signatures.items():
                signature_map.signature_def[key].CopyFrom(value)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = h.servable.name
            response.model_spec.version.value = h.servable.version
            response.metadata[SIGNATURE_DEF].Pack(signature_map)
            return response

    def status(self, request):
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None  # labels ignored
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, state in self.manager.status(spec.name, version):
            item = response.model_version_status.add()
            item.version = number
            item.state = STATE_NUMBERS.Value(state.state)
            item.status.error_code = state.code.value[0]
            item.status.error_message = state.message
        return response

    def reload_config(self, request, reader):
        """HandleReloadConfigRequest: only a ModelConfigList; waits until the models loaded.
        Refused (PERMISSION_DENIED) unless the server allows it, and then only for base paths
        under those it started with (serving/config.py ReloadPolicy)."""
        self.reload_policy.check([])
        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                "ModelConfigList is currently supported"
            )
        try:
            models = reader(request.config)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        self.reload_policy.check(models)
        self.manager.reload_config(models)
        return model_management_pb2.ReloadConfigResponse()
