"""Config files of `tensorflow_model_server`, parsed into typed configs, and the flags resolved
into one ServingConfig (the flags themselves: serving/flags.py).

The flag names, defaults and text-format config files are TF Serving's own (model_servers/main.cc,
server.h, model_server_config.proto, session_bundle_config.proto, monitoring_config.proto,
ssl_config.proto), so a
deployment can switch between this server and the real one without changing anything else.
A config file that does not parse is refused at start-up with `file:line: reason`.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field

import grpc
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ServingError
from serving.flags import CPUS, ServerFlags
from serving.protos import BatchingParameters, MonitoringConfig
from serving.ssl_config import SSLOptions, load_ssl_file
from serving.text_proto import ConfigError, line_of, parse_text_proto, read_config_file

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath


# ---------------------------------------------------------------- typed configs


@dataclass(frozen=True)
class VersionPolicy:
    """FileSystemStoragePathSourceConfig.ServableVersionPolicy: latest N, all, or specific."""

    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchingOptions:
    """BatchingParameters with SharedBatchScheduler's defaults filled in."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = CPUS
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    # A request larger than the open batch's room is split over batches of at most
    # max_execution_batch_size rows (default max_batch_size, bundle_factory_util.h).
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None

    @property
    def execution_batch_size(self) -> int:
        """The most rows one model call takes."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size


@dataclass(frozen=True)
class MonitoringOptions:
    prometheus_enable: bool = False
    prometheus_path: str = DEFAULT_PROMETHEUS_PATH


# ---------------------------------------------------------------- text-format parsing


def model_configs_from_proto(config, text: str, path: str) -> list[ModelConfig]:
    """ModelServerConfig -> ModelConfig list, with TF Serving's rules checked."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError(f"{path}:1: custom_model_config is not supported")
    models: list[ModelConfig] = []
    seen: set[str] = set()
    for proto in config.model_config_list.config:
        where = f"{path}:{line_of(text, proto.name or 'config')}"
        if not proto.name:
            raise ConfigError(f"{where}: model config without a name")
        if proto.name in seen:
            raise ConfigError(f"{where}: duplicate model name {proto.name!r}")
        seen.add(proto.name)
        if not proto.base_path:
            raise ConfigError(f"{where}: model {proto.name!r} has no base_path")
        if proto.model_type and proto.model_platform:  # server_core.cc ValidateModelConfig
            raise ConfigError(
                f"{where}: Illegal setting both ModelServerConfig::model_type (deprecated) and "
                f"ModelServerConfig::model_platform, model name is {proto.name}"
            )
        if not is_absolute_base_path(proto.base_path):  # server_core.cc ValidateAllPaths
            raise ConfigError(
                f"{where}: Expected model {proto.name} to have an absolute path or URI; got "
                f"base_path()={proto.base_path}"
            )
        if proto.model_platform not in ("", "tensorflow"):
            raise ConfigError(
                f"{path}:{line_of(text, proto.model_platform)}: model_platform "
                f"{proto.model_platform!r} is not supported (only 'tensorflow')"
            )
        policy_proto = proto.model_version_policy
        kind = policy_proto.WhichOneof("policy_choice") or "latest"
        if kind == "latest":
            n = policy_proto.latest.num_versions or 1
            policy = VersionPolicy("latest", num_versions=n)
        elif kind == "all":
            policy = VersionPolicy("all")
        else:
            versions = tuple(sorted(set(policy_proto.specific.versions)))
            if not versions:
                raise ConfigError(
                    f"{path}:{line_of(text, 'specific')}: model {proto.name!r}: "
                    "specific version policy lists no versions"
                )
            policy = VersionPolicy("specific", versions=versions)
        models.append(ModelConfig(proto.name, proto.base_path, policy, dict(proto.version_labels)))
    return models


def is_absolute_base_path(base_path: str) -> bool:
    """An absolute path or a URI (`gs://...`), as ServerCore requires of every base path."""
    return "://" in base_path or base_path.startswith("/")


def load_model_config_file(path: str) -> list[ModelConfig]:
    text = read_config_file(path, "ModelServerConfig")
    proto = parse_text_proto(text, model_server_config_pb2.ModelServerConfig(), path)
    return model_configs_from_proto(proto, text, path)


def batching_from_proto(proto, text: str = "", path: str = "<batching>") -> BatchingOptions:
    defaults = BatchingOptions()

    def get(name):
        return getattr(proto, name).value if proto.HasField(name) else getattr(defaults, name)

    options = BatchingOptions(
        max_batch_size=int(get("max_batch_size")),
        batch_timeout_micros=int(get("batch_timeout_micros")),
        max_enqueued_batches=int(get("max_enqueued_batches")),
        num_batch_threads=int(get("num_batch_threads")),
        allowed_batch_sizes=tuple(int(s) for s in proto.allowed_batch_sizes),
        pad_variable_length_inputs=bool(proto.pad_variable_length_inputs),
        enable_large_batch_splitting=bool(get("enable_large_batch_splitting")),
        max_execution_batch_size=(
            int(proto.max_execution_batch_size.value)
            if proto.HasField("max_execution_batch_size")
            else None
        ),
    )
    for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
        if getattr(options, name) <= 0:
            raise ConfigError(f"{path}:{line_of(text, name)}: {name} must be positive")
    execution = options.max_execution_batch_size
    if execution is not None and not 0 < execution <= options.max_batch_size:
        raise ConfigError(  # session_bundle_config.proto's rule
            f"{path}:{line_of(text, 'max_execution_batch_size')}: max_execution_batch_size "
            f"must be positive and at most max_batch_size ({options.max_batch_size}); "
            f"received {execution}"
        )
    sizes = options.allowed_batch_sizes
    if sizes:
        if list(sizes) != sorted(set(sizes)) or sizes[0] <= 0:
            raise ConfigError(
                f"{path}:{line_of(text, 'allowed_batch_sizes')}: allowed_batch_sizes must "
                "be positive and strictly increasing"
            )
        if sizes[-1] != options.max_batch_size:  # bundle_factory_util.cc's rule and text
            raise ConfigError(
                f"{path}:{line_of(text, 'allowed_batch_sizes')}: Last entry in "
                "allowed_batch_sizes must match max_batch_size; last entry was "
                f"{sizes[-1]}; expected {options.max_batch_size}"
            )
    return options


def load_batching_file(path: str) -> BatchingOptions:
    text = read_config_file(path, "BatchingParameters")
    return batching_from_proto(parse_text_proto(text, BatchingParameters(), path), text, path)


def load_monitoring_file(path: str) -> MonitoringOptions:
    text = read_config_file(path, "MonitoringConfig")
    proto = parse_text_proto(text, MonitoringConfig(), path)
    prom = proto.prometheus_config
    route = prom.path or DEFAULT_PROMETHEUS_PATH
    if not route.startswith("/"):
        raise ConfigError(f"{path}:{line_of(text, 'path')}: path must start with '/'")
    return MonitoringOptions(prometheus_enable=prom.enable, prometheus_path=route)


def canonical_base_path(base_path: str) -> str:
    """A local base path made absolute with `..` and symlinks resolved; a URL (gs://...) with
    `.` and `..` removed from its path."""
    scheme, sep, rest = base_path.partition("://")
    if sep:
        return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}"
    return os.path.realpath(os.path.abspath(os.path.expanduser(base_path)))


@dataclass(frozen=True)
class ReloadPolicy:
    """Who may change the model list over gRPC (HandleReloadConfigRequest). TF Serving accepts
    any config from anyone who reaches the port; here it is off unless
    --allow_reload_config_requests, and then every base path must be one the server started with,
    or under one (compared after resolving `..` and symlinks)."""

    allowed: bool = False
    roots: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, allowed: bool, models: list[ModelConfig], extra_roots: tuple[str, ...] = ()
    ) -> ReloadPolicy:
        """The start-up base paths, plus `extra_roots` (--reload_config_base_path_roots) for
        models a reload may add that the server did not start with."""
        paths = [m.base_path for m in models] + list(extra_roots)
        return cls(allowed, tuple(sorted({canonical_base_path(p) for p in paths})))

    def check(self, models: list[ModelConfig]) -> None:
        if not self.allowed:
            raise ServingError(
                grpc.StatusCode.PERMISSION_DENIED,
                "HandleReloadConfigRequest is disabled on this server; start it with "
                "--allow_reload_config_requests to allow it",
            )
        for model in models:
            path = canonical_base_path(model.base_path)
            if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in self.roots):
                raise ServingError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"model {model.name!r}: base_path {model.base_path!r} is not under a base "
                    f"path this server was started with ({', '.join(self.roots) or 'none'}; "
                    "--reload_config_base_path_roots adds more)",
                )


def reload_roots(text: str) -> tuple[str, ...]:
    """`--reload_config_base_path_roots=/models,gs://bucket/models`: absolute paths or URIs."""
    roots = tuple(filter(None, (r.strip() for r in text.split(","))))
    for root in roots:
        if not is_absolute_base_path(root):
            raise ConfigError(
                f"--reload_config_base_path_roots: {root!r} is not an absolute path or URI"
            )
    return roots


def parse_channel_arguments(text: str) -> list[tuple[str, object]]:
    """`--grpc_channel_arguments=a=1,b=x` as TF Serving's parseGrpcChannelArgs reads it."""
    options: list[tuple[str, object]] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--grpc_channel_arguments: {item!r} is not key=value")
        options.append((key, int(value) if re.fullmatch(r"-?\d+", value) else value))
    return options


@dataclass(frozen=True)
class ServingConfig:
    """Everything the server needs, validated: flags plus the parsed config files."""

    flags: ServerFlags
    models: list[ModelConfig]
    batching: BatchingOptions | None
    monitoring: MonitoringOptions
    channel_options: list[tuple[str, object]]
    ssl: SSLOptions | None = None
    reload: ReloadPolicy = ReloadPolicy()


def resolve(flags: ServerFlags) -> ServingConfig:
    """Validate flags and read config files, in the order and with the rules of server.cc."""
    if flags.port == 0:
        raise ConfigError("--port must be set (gRPC cannot be disabled)")
    if flags.rest_api_port and flags.rest_api_port == flags.port:
        raise ConfigError("--rest_api_port cannot be the same as --port")
    for name in (
        "rest_api_max_body_bytes",
        "rest_api_read_timeout_in_ms",
        "rest_api_listen_backlog",
        "rest_api_max_connections",
    ):
        if getattr(flags, name) <= 0:
            raise ConfigError(f"--{name} must be positive")
    if not flags.model_base_path and not flags.model_config_file:
        raise ConfigError("Both --model_base_path and --model_config_file are empty!")
    if flags.model_config_file:
        models = load_model_config_file(flags.model_config_file)
    else:
        if not is_absolute_base_path(flags.model_base_path):
            raise ConfigError(
                f"--model_base_path: Expected model {flags.model_name} to have an absolute path "
                f"or URI; got base_path()={flags.model_base_path}"
            )
        models = [ModelConfig(flags.model_name, flags.model_base_path)]
    batching = None
    if flags.enable_batching:
        batching = (
            load_batching_file(flags.batching_parameters_file)
            if flags.batching_parameters_file
            else BatchingOptions()
        )
    elif flags.batching_parameters_file:
        raise ConfigError("--batching_parameters_file is set without --enable_batching")
    monitoring = (
        load_monitoring_file(flags.monitoring_config_file)
        if flags.monitoring_config_file
        else MonitoringOptions()
    )
    channel = [
        ("grpc.max_receive_message_length", flags.grpc_max_message_bytes),
        ("grpc.max_send_message_length", flags.grpc_max_message_bytes),
        *parse_channel_arguments(flags.grpc_channel_arguments),
    ]
    ssl = load_ssl_file(flags.ssl_config_file) if flags.ssl_config_file else None
    roots = reload_roots(flags.reload_config_base_path_roots)
    if roots and not flags.allow_reload_config_requests:
        raise ConfigError(
            "--reload_config_base_path_roots has no effect without --allow_reload_config_requests"
        )
    reload = ReloadPolicy.of(flags.allow_reload_config_requests, models, roots)
    return ServingConfig(flags, models, batching, monitoring, channel, ssl, reload)
