"""`tensorflow_model_server`'s flags, as xfer-serve takes them: names and defaults as TF Serving's
server.h and main.cc (gflags' booleans and underscores; the dashed spelling works too), plus the
few of ours, each marked "not a TF Serving flag". No TensorFlow import: `--help` stays fast.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Annotated

import tyro

INT32_MAX = 2**31 - 1  # TF Serving's gRPC server: builder.SetMaxMessageSize(INT32_MAX)
CPUS = os.cpu_count() or 1
# HTTP/REST limits (ours: TF Serving's libevent server has no body limit, a 128 listen backlog and
# no cap on connections, and drops a connection that sends nothing for 50 s, HTTP_READ_TIMEOUT).
REST_MAX_BODY_BYTES = 64 << 20
REST_READ_TIMEOUT_MS = 50_000
REST_LISTEN_BACKLOG = 1024
REST_MAX_CONNECTIONS = 256


def _bool(args: list[str]) -> bool:
    """gflags' booleans: `--enable_batching`, `--enable_batching=false`, `--enable_batching 0`."""
    if not args:
        return True
    value = args[0].strip().lower()
    if value in ("1", "true", "t", "yes", "y"):
        return True
    if value in ("0", "false", "f", "no", "n"):
        return False
    raise ValueError(f"expected true or false; received {args[0]!r}")


GflagsBool = Annotated[
    bool,
    tyro.conf.FlagConversionOff,
    tyro.constructors.PrimitiveConstructorSpec(
        nargs="*",
        metavar="[true|false]",
        instance_from_str=_bool,
        is_instance=lambda value: isinstance(value, bool),
        str_from_instance=lambda value: [str(value).lower()],
    ),
]


def _flag(default, help: str):  # noqa: A002 - mirrors argparse
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerFlags:
    """`tensorflow_model_server` flags we implement; defaults as in TF Serving's server.h."""

    port: int = _flag(8500, "TCP port for the gRPC API")
    rest_api_port: int = _flag(0, "port for the HTTP/REST API and metrics; 0 disables it")
    model_name: str = _flag("default", "name of the model (ignored if --model_config_file is set)")
    model_base_path: str = _flag(
        "", "directory holding <N>/ version directories (unless --model_config_file)"
    )
    model_config_file: str = _flag("", "ModelServerConfig in protobuf text format")
    model_config_file_poll_wait_seconds: int = _flag(
        0, "re-read --model_config_file every N s; 0 = never"
    )
    file_system_poll_wait_seconds: int = _flag(
        1, "look for new versions every N s; 0 = only at start-up"
    )
    enable_batching: GflagsBool = _flag(False, "merge concurrent requests into one model call")
    batching_parameters_file: str = _flag("", "BatchingParameters in protobuf text format")
    monitoring_config_file: str = _flag(
        "", "MonitoringConfig in protobuf text format (Prometheus endpoint)"
    )
    grpc_max_threads: int = _flag(4 * CPUS, "max gRPC worker threads")
    grpc_channel_arguments: str = _flag(
        "",
        "comma-separated gRPC server options, e.g. grpc.max_receive_message_length=8388608",
    )
    grpc_max_message_bytes: int = _flag(
        INT32_MAX, "max gRPC message size, both directions (TF Serving: INT32_MAX)"
    )
    rest_api_num_threads: int = _flag(4 * CPUS, "max concurrent HTTP/REST requests")
    rest_api_timeout_in_ms: int = _flag(30000, "HTTP/REST request timeout")
    rest_api_max_body_bytes: int = _flag(
        REST_MAX_BODY_BYTES,
        "largest HTTP/REST request body; a larger one is refused with 413 (not a TF Serving flag)",
    )
    rest_api_read_timeout_in_ms: int = _flag(
        REST_READ_TIMEOUT_MS,
        "close an HTTP/REST connection that sends nothing for this long; a stalled body gets 408 "
        "(not a TF Serving flag)",
    )
    rest_api_listen_backlog: int = _flag(
        REST_LISTEN_BACKLOG,
        "HTTP/REST listen backlog, capped by net.core.somaxconn (not a TF Serving flag)",
    )
    rest_api_max_connections: int = _flag(
        REST_MAX_CONNECTIONS,
        "HTTP/REST connections served at once, one thread each; more wait in the listen backlog "
        "(not a TF Serving flag)",
    )
    enable_model_warmup: GflagsBool = _flag(
        True, "replay assets.extra/tf_serving_warmup_requests before serving"
    )
    enable_grpc_healthcheck_service: GflagsBool = _flag(
        True, "serve grpc.health.v1.Health (TF Serving default: false)"
    )
    allow_version_labels_for_unavailable_models: GflagsBool = _flag(
        False, "allow labels on versions not yet loaded"
    )
    ssl_config_file: str = _flag(
        "",
        "SSLConfig in protobuf text format (server_key, server_cert, custom_ca, client_verify): "
        "TLS for gRPC; REST stays plain HTTP, as in TF Serving",
    )
    allow_reload_config_requests: GflagsBool = _flag(
        False,
        "accept ModelService/HandleReloadConfigRequest, and then only base paths under those the "
        "server started with; refused (PERMISSION_DENIED) by default (not a TF Serving flag)",
    )
    reload_config_base_path_roots: str = _flag(
        "",
        "comma-separated absolute paths or URIs under which a HandleReloadConfigRequest may also "
        "place base paths, besides those the server started with (not a TF Serving flag)",
    )
    grpc_socket_path: str = _flag(
        "", "also serve gRPC on this Unix domain socket (as TF Serving: unix:<path>)"
    )
    max_num_load_retries: int = _flag(
        5, "retries of a version's load after its first failure; 0 = one attempt only"
    )
    load_retry_interval_micros: int = _flag(
        60_000_000, "wait between load retries, in microseconds; negative = no wait"
    )
    host: str = _flag(
        "127.0.0.1",
        "address to bind gRPC and REST; loopback by default, 0.0.0.0 for every interface "
        "(not a TF Serving flag: TF Serving binds 0.0.0.0)",
    )
    verbose: GflagsBool = _flag(False, "debug logging (not a TF Serving flag)")
    ignored: tyro.conf.Suppress[tuple[str, ...]] = ()  # TF Serving flags taken, not acted on


# tensorflow_model_server flags (main.cc) that a deployment may pass and this server takes
# without acting on them (logged at start-up): name -> True if it is a boolean.
IGNORED_TF_SERVING_FLAGS = {
    "enable_per_model_batching_parameters": True,
    "enable_profiler": True,
    "enable_serialization_as_tensor_content": True,
    "enable_signature_method_name_check": True,
    "flush_filesystem_caches": True,
    "prefer_tflite_model": True,
    "remove_unused_fields_from_bundle_metagraph": True,
    "rest_api_enable_cors_support": True,
    "skip_initialize_tpu": True,
    "use_alts_credentials": True,
    "xla_cpu_compilation_enabled": True,
    "mixed_precision": False,
    "num_load_threads": False,
    "num_unload_threads": False,
    "num_request_iterations_for_warmup": False,
    "num_tflite_interpreters_per_pool": False,
    "num_tflite_pools": False,
    "per_process_gpu_memory_fraction": False,
    "platform_config_file": False,
    "saved_model_tags": False,
    "tensorflow_inter_op_parallelism": False,
    "tensorflow_intra_op_parallelism": False,
    "tensorflow_session_config_file": False,
    "tensorflow_session_parallelism": False,
    "thread_pool_factory_config_file": False,
}
_BOOL_VALUES = {"1", "0", "true", "false", "t", "f", "yes", "no", "y", "n"}


def split_ignored(argv: list[str]) -> tuple[list[str], list[str]]:
    """argv -> (the flags we implement, the ignored TF Serving flags as given)."""
    kept: list[str] = []
    ignored: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, has_value, _ = arg.lstrip("-").partition("=")
        boolean = IGNORED_TF_SERVING_FLAGS.get(name.replace("-", "_"))
        if not arg.startswith("--") or boolean is None:
            kept.append(arg)
            i += 1
            continue
        taken = [arg]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        takes_next = nxt is not None and not nxt.startswith("--") and not has_value
        if takes_next and (not boolean or nxt.lower() in _BOOL_VALUES):
            taken.append(nxt)
        ignored.append(" ".join(taken))
        i += len(taken)
    return kept, ignored


EXIT_OK, EXIT_LOAD, EXIT_USAGE = 0, 1, 2
SERVE_EXIT_CODES = {
    EXIT_LOAD: "a model of the initial config did not become available (after "
    "--max_num_load_retries)",
    EXIT_OK: "stopped by SIGTERM or SIGINT",
    EXIT_USAGE: "usage or configuration error (bad flag, a config file that does not parse, "
    "a port in use)",
}


def parse(args_type, argv, *, prog: str, description: str, exit_codes: dict[int, str], **kw):
    """`tyro.cli` (both spellings of every flag work); `--help` ends with the exit codes. The same
    few lines as export/cliargs.py: serving/ imports nothing from export/."""
    description = re.sub(r"(?<=\S)\n(?=\S)", " ", description.strip())  # tyro joins lines
    try:
        return tyro.cli(args_type, args=argv, prog=prog, description=description, **kw)
    except SystemExit as exc:
        if exc.code == 0:  # --help was printed
            codes = sorted({EXIT_OK: "done", EXIT_USAGE: "usage error", **exit_codes}.items())
            print("exit codes:\n" + "".join(f"  {code}  {text}\n" for code, text in codes), end="")
        raise


def parse_flags(argv: list[str] | None = None) -> ServerFlags:
    """Flags as `tensorflow_model_server` spells them (`--model_base_path=/m`); the dashed
    spelling works too."""
    import sys

    kept, ignored = split_ignored(list(sys.argv[1:] if argv is None else argv))
    flags = parse(
        ServerFlags,
        kept,
        prog="xfer-serve",
        description="Local TF-Serving-compatible model server (flags as tensorflow_model_server; "
        "its flags this server does not act on are accepted and logged as ignored).",
        exit_codes=SERVE_EXIT_CODES,
        use_underscores=True,
    )
    return dataclasses.replace(flags, ignored=tuple(ignored))
