"""The local TF-Serving-compatible model server (`xfer-serve`, `python -m serving`: serving/cli.py).

Start-up follows tensorflow_model_server: read flags and config files (a bad file stops the
server with `file:line: reason`), load and warm up the aspired versions, then open the gRPC port
(and REST with metrics if --rest_api_port); file-system and config polling run in the background.
"""

from __future__ import annotations

import logging
import threading

from serving.api import ServingApi
from serving.config import ServingConfig, load_model_config_file
from serving.grpc_service import build_grpc_server
from serving.http_server import RestServer
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.rest import RestApi

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """A model of the initial config did not become available (ServerCore::Create fails)."""


class ModelServer:
    """The whole server in one object, so tests can run it in-process on free ports."""

    def __init__(self, config: ServingConfig):
        self.config = config
        flags = config.flags
        self.metrics = Metrics()
        self.manager = ModelManager(
            config.models,
            batching=config.batching,
            metrics=self.metrics,
            warmup=flags.enable_model_warmup,
            allow_labels_for_unavailable=flags.allow_version_labels_for_unavailable_models,
        )
        self.api = ServingApi(self.manager, self.metrics, config.reload)
        self.grpc_server = None
        self.rest_server = None
        self.health = None
        self.grpc_port = 0
        self.rest_port = 0
        self._health_thread = None
        self._stopped = threading.Event()

    def start(self) -> ModelServer:
        flags = self.config.flags
        for flag in flags.ignored:
            log.warning("tensorflow_model_server flag %s: accepted, ignored by xfer-serve", flag)
        failed = self.manager.load_initial(  # load and warm up before any port opens
            flags.max_num_load_retries, flags.load_retry_interval_micros / 1e6
        )
        if failed:
            raise StartupError(failed)
        self.grpc_server, self.grpc_port, self.health = build_grpc_server(
            self.api,
            f"{flags.host}:{flags.port}",
            max_threads=flags.grpc_max_threads,
            options=self.config.channel_options,
            health=flags.enable_grpc_healthcheck_service,
            ssl=self.config.ssl,
            socket_path=flags.grpc_socket_path,
        )
        self.grpc_server.start()
        log.info(
            "Running gRPC ModelServer at %s:%d (%s) ...",
            flags.host,
            self.grpc_port,
            "TLS" if self.config.ssl else "plaintext",
        )
        if flags.grpc_socket_path:
            log.info("Running gRPC ModelServer at UNIX socket %s ...", flags.grpc_socket_path)
        if flags.rest_api_port:
            prom = self.config.monitoring
            rest = RestApi(
                self.api,
                prom.prometheus_path if prom.prometheus_enable else None,
                flags.rest_api_timeout_in_ms,
            )
            self.rest_server = RestServer(
                rest,
                flags.host,
                flags.rest_api_port,
                flags.rest_api_num_threads,
                max_body_bytes=flags.rest_api_max_body_bytes,
                read_timeout=flags.rest_api_read_timeout_in_ms / 1000,
                backlog=flags.rest_api_listen_backlog,
                max_connections=flags.rest_api_max_connections,
            )
            self.rest_server.start()
            self.rest_port = self.rest_server.port
            log.info("Exporting HTTP/REST API at:%s:%d ...", flags.host, self.rest_port)
        reader = None
        if flags.model_config_file:

            def reader():
                return load_model_config_file(flags.model_config_file)

        self.manager.start_polling(
            flags.file_system_poll_wait_seconds, reader, flags.model_config_file_poll_wait_seconds
        )
        if self.health is not None:
            self._health_thread = threading.Thread(
                target=self._update_health, name="health", daemon=True
            )
            self._health_thread.start()
        return self

    def _update_health(self) -> None:
        """Overall health: SERVING once every model has an available version."""
        from grpc_health.v1 import health_pb2

        status = health_pb2.HealthCheckResponse
        while True:
            serving = self.manager.is_serving()
            value = status.SERVING if serving else status.NOT_SERVING
            self.health.set("", value)
            for name in self.manager.model_names():
                self.health.set(name, value)
            if self._stopped.wait(0.5):
                return

    def wait(self) -> None:
        self._stopped.wait()

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        if self.rest_server is not None:
            self.rest_server.stop()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace).wait()
        self.manager.stop()
