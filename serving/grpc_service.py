"""gRPC: tensorflow.serving.PredictionService and ModelService, plus grpc.health.v1.Health."""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving import deadlines
from serving.api import ServingApi
from serving.config import model_configs_from_proto
from serving.errors import ServingError, from_tf_error
from serving.ssl_config import SSLOptions

log = logging.getLogger(__name__)


def _guard(method):
    """Turn ServingError / TF errors into gRPC status codes; never let a request kill a thread."""

    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as exc:
            context.abort(exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001
            if hasattr(exc, "error_code"):  # tf.errors.OpError from session.run
                error = from_tf_error(exc)
                context.abort(error.code, error.message)
            log.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    wrapper.__name__ = method.__name__
    return wrapper


def call_deadline(context) -> float | None:
    """The call's deadline on time.monotonic()'s clock, None without one: TF Serving gives every
    model run the time left (prediction_service_impl.cc, DeadlineToTimeoutMillis)."""
    return deadlines.after(context.time_remaining())


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, api: ServingApi):
        self.api = api

    @_guard
    def Predict(self, request, context):  # noqa: N802 - gRPC method names
        return self.api.predict(request, deadline=call_deadline(context))

    @_guard
    def Classify(self, request, context):  # noqa: N802
        return self.api.classify(request, deadline=call_deadline(context))

    @_guard
    def Regress(self, request, context):  # noqa: N802
        return self.api.regress(request, deadline=call_deadline(context))

    @_guard
    def MultiInference(self, request, context):  # noqa: N802
        return self.api.multi_inference(request, deadline=call_deadline(context))

    @_guard
    def GetModelMetadata(self, request, context):  # noqa: N802
        return self.api.metadata(request)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, api: ServingApi):
        self.api = api

    @_guard
    def GetModelStatus(self, request, context):  # noqa: N802
        return self.api.status(request)

    @_guard
    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        return self.api.reload_config(
            request, lambda config: model_configs_from_proto(config, "", "ReloadConfigRequest")
        )


def build_grpc_server(
    api: ServingApi,
    address: str,
    *,
    max_threads: int,
    options: list[tuple[str, object]],
    health: bool = True,
    ssl: SSLOptions | None = None,
    socket_path: str = "",
):
    """A started-later grpc.Server; returns (server, bound port, health servicer or None).
    With `ssl` the port speaks TLS only, as TF Serving's with --ssl_config_file; `socket_path`
    adds a Unix socket with the same credentials (--grpc_socket_path, as server.cc)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        options=options,
        maximum_concurrent_rpcs=None,
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(api), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(api), server)
    health_servicer = None
    if health:
        from grpc_health.v1 import health as grpc_health
        from grpc_health.v1 import health_pb2_grpc

        health_servicer = grpc_health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    credentials = None
    if ssl is not None:  # server.cc: client_verify -> REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_...
        credentials = grpc.ssl_server_credentials(
            [(ssl.server_key, ssl.server_cert)],
            root_certificates=ssl.custom_ca if ssl.client_verify else None,
            require_client_auth=ssl.client_verify,
        )

    def bind(where: str) -> int:
        if credentials is None:
            return server.add_insecure_port(where)
        return server.add_secure_port(where, credentials)

    port = bind(address)
    if port == 0:
        raise OSError(f"cannot bind the gRPC port at {address}")
    if socket_path and bind(f"unix:{socket_path}") == 0:
        raise OSError(f"cannot bind the gRPC Unix socket at {socket_path} (--grpc_socket_path)")
    return server, port, health_servicer
