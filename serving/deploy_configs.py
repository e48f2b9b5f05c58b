"""`xfer-serving-configs`: TF Serving config files for a published model, for the container/cluster.

Writes, in protobuf text format built from the real protos (so `tensorflow_model_server` and the
local server parse them alike):
  models.config      ModelServerConfig: the model, its base path *inside the container*, the version
                     policy (latest N, or exactly the versions published now) and version labels
  batching.config    BatchingParameters
  monitoring.config  MonitoringConfig (Prometheus on the REST port)

Each file is written atomically and parsed back with the server's own loaders before it is kept.
With --tune, the batching parameters are measured on a running server instead (batching off
there): batch sizes x concurrencies, the fastest choice within --p99-ms; the table and a plot
are written beside the files (batching-tuning.json, batching-tuning.png).
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.config import (
    ConfigError,
    load_batching_file,
    load_model_config_file,
    load_monitoring_file,
)
from serving.flags import CPUS, parse
from serving.protos import BatchingParameters, MonitoringConfig

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"


@dataclass(frozen=True)
class DeployConfig:
    model_name: str
    container_base_path: str  # where the versions are inside the serving container
    published_dir: str | None = None  # local base path, to pin the versions published now
    policy: str = "latest"  # latest | specific | all
    latest_versions: int = 1
    labels: dict[str, int] = field(default_factory=dict)
    max_batch_size: int = 32
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 100
    num_batch_threads: int | None = 4  # None: not written, the server's cores
    allowed_batch_sizes: tuple[int, ...] = ()
    max_execution_batch_size: int | None = None  # set: enable_large_batch_splitting
    metrics_path: str = DEFAULT_METRICS_PATH


def published_versions(base: str | Path) -> list[int]:
    """Plain integer directories, as TF Serving counts them."""
    base = Path(base)
    if not base.is_dir():
        raise ConfigError(f"{base}: no such model base path")
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def model_server_config(config: DeployConfig) -> str:
    proto = model_server_config_pb2.ModelServerConfig()
    model = proto.model_config_list.config.add()
    model.name = config.model_name
    model.base_path = config.container_base_path
    model.model_platform = "tensorflow"
    policy = model.model_version_policy
    if config.policy == "latest":
        policy.latest.num_versions = config.latest_versions
    elif config.policy == "all":
        policy.all.SetInParent()
    elif config.policy == "specific":
        if not config.published_dir:
            raise ConfigError("policy 'specific' pins the published versions: give --published")
        versions = published_versions(config.published_dir)
        if not versions:
            raise ConfigError(f"{config.published_dir}: no published versions to pin")
        policy.specific.versions.extend(versions)
    else:
        raise ConfigError(f"policy must be latest, specific or all; received {config.policy!r}")
    if config.labels and config.published_dir:
        have = published_versions(config.published_dir)
        for label, version in config.labels.items():
            if version not in have:
                raise ConfigError(
                    f"label {label!r} points at version {version}, not published "
                    f"in {config.published_dir} (have {have})"
                )
    for label, version in sorted(config.labels.items()):
        model.version_labels[label] = version
    return text_format.MessageToString(proto)


def batching_parameters(config: DeployConfig) -> str:
    proto = BatchingParameters()
    proto.max_batch_size.value = config.max_batch_size
    proto.batch_timeout_micros.value = config.batch_timeout_micros
    proto.max_enqueued_batches.value = config.max_enqueued_batches
    if config.num_batch_threads is not None:
        proto.num_batch_threads.value = config.num_batch_threads
    proto.allowed_batch_sizes.extend(config.allowed_batch_sizes)
    if config.max_execution_batch_size is not None:
        proto.enable_large_batch_splitting.value = True
        proto.max_execution_batch_size.value = config.max_execution_batch_size
    return text_format.MessageToString(proto)


def monitoring_config(config: DeployConfig) -> str:
    proto = MonitoringConfig()
    proto.prometheus_config.enable = True
    proto.prometheus_config.path = config.metrics_path
    return text_format.MessageToString(proto)


FILES = {
    "models.config": (model_server_config, load_model_config_file),
    "batching.config": (batching_parameters, load_batching_file),
    "monitoring.config": (monitoring_config, load_monitoring_file),
}


def write_configs(config: DeployConfig, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (render, load) in FILES.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(render(config))
            load(tmp)  # the server's own parser: never keep a file it would refuse
            os.replace(tmp, out / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        written.append(out / name)
    return written


def _labels(text: str) -> dict[str, int]:
    labels = {}
    for item in filter(None, text.split(",")):
        label, _, version = item.partition("=")
        if not version.isdigit():
            raise ValueError(f"labels look like stable=3,canary=4; got {item!r}")
        labels[label.strip()] = int(version)
    return labels


Labels = Annotated[
    dict[str, int],
    tyro.constructors.PrimitiveConstructorSpec(
        nargs=1,
        metavar="LABEL=N,...",
        instance_from_str=lambda args: _labels(args[0]),
        is_instance=lambda value: isinstance(value, dict),
        str_from_instance=lambda value: [",".join(f"{k}={v}" for k, v in value.items())],
    ),
]


def _flag(default, help: str):  # noqa: A002 - mirrors argparse
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class DeployFlags:
    model_name: str = _flag(MISSING, "the model's name on the server")
    container_base_path: str | None = _flag(
        None, "base path inside the container (default /models/<name>)"
    )
    published: str | None = _flag(None, "the local model base path (for specific/labels)")
    policy: Literal["latest", "specific", "all"] = _flag("latest", "the version policy")
    latest_versions: int = _flag(1, "N of the latest policy")
    labels: Labels = field(default_factory=dict, metadata={"help": "e.g. stable=3,canary=4"})
    max_batch_size: int = _flag(
        32, "BatchingParameters.max_batch_size: the largest request accepted (also with --tune)"
    )
    batch_timeout_micros: int = _flag(0, "BatchingParameters.batch_timeout_micros")
    max_enqueued_batches: int = _flag(100, "BatchingParameters.max_enqueued_batches")
    num_batch_threads: int | None = _flag(
        4, "BatchingParameters.num_batch_threads (None: not written, the server's cores)"
    )
    allowed_batch_sizes: str = _flag(
        "", "BatchingParameters.allowed_batch_sizes, e.g. 8,16,32; empty: no padding"
    )
    out: str = _flag(MISSING, "directory for the three files")
    tune: bool = _flag(False, "measure --target and write the batching parameters it chooses")
    target: str | None = _flag(
        None, "--tune: host:port of a running server's gRPC API, batching off, serving the model"
    )
    images: str | None = _flag(None, "--tune: a folder of sample images to send (recursive)")
    p99_ms: float | None = _flag(None, "--tune: the latency target, p99 per request in ms")
    request_images: int = _flag(1, "--tune: images per client request (xfer-score --batch-size)")
    grpc_max_threads: int = _flag(
        4 * CPUS, "--tune: the server's --grpc_max_threads (default 4 x this machine's cores)"
    )
    tune_batch_sizes: str = _flag("1,2,4,8,16,32", "--tune: batch sizes to measure")
    tune_concurrencies: str = _flag("1,2,4", "--tune: concurrencies (batch threads) to measure")
    tune_seconds: float = _flag(2.0, "--tune: seconds per measured point and round")
    tune_rounds: int = _flag(3, "--tune: rounds over every point; the median of each is kept")
    padding_tolerance: float = _flag(
        0.1, "--tune: padding may add at most this fraction to a batch's time"
    )
    signature_name: str = _flag("serving_default", "--tune: the signature to send requests to")


EXIT_CODES = {
    0: "written; their paths are printed on stdout",
    1: "--tune: no measured configuration meets --p99-ms (the measured table is written)",
    2: "usage or configuration error (bad flags; a file the server would refuse; no server)",
}


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes integers like 1,2,4; received {text!r}") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{flag} takes positive integers; received {text!r}")
    return values


def with_choice(config: DeployConfig, choice) -> DeployConfig:
    """The tuned batching parameters in `config`. Its max_batch_size stays the largest request
    accepted (xfer-score sends up to 32 images, the warmup file 5, and TF Serving refuses a
    larger one, warmup included); batches smaller than that run with large batch splitting:
    a request is spread over batches of at most the chosen size."""
    import dataclasses

    accepted = max(config.max_batch_size, choice.max_batch_size)
    allowed = choice.allowed_batch_sizes
    if allowed and allowed[-1] != accepted:  # TF Serving: the last entry is max_batch_size
        allowed = (*allowed, accepted)
    return dataclasses.replace(
        config,
        max_batch_size=accepted,
        batch_timeout_micros=choice.batch_timeout_micros,
        num_batch_threads=choice.num_batch_threads,
        allowed_batch_sizes=allowed,
        max_execution_batch_size=(
            choice.max_batch_size if choice.max_batch_size < accepted else None
        ),
    )


def _tuned(args: DeployFlags, config: DeployConfig) -> DeployConfig | None:
    """`config` with the batching parameters measured on --target (None: --p99-ms is out of
    reach; the measured table is written all the same)."""
    import logging

    from serving.batch_tuning import TargetUnreachable
    from serving.loadgen import LoadError
    from serving.tune import REPORT_JSON, REPORT_PNG, TuneConfig, run

    missing = [f for f in ("target", "images", "p99_ms") if getattr(args, f) is None]
    if missing:
        raise ConfigError("--tune needs " + ", ".join("--" + m.replace("_", "-") for m in missing))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    tune = TuneConfig(
        target=args.target,
        model_name=args.model_name,
        images=args.images,
        p99_ms=args.p99_ms,
        batch_sizes=_ints(args.tune_batch_sizes, "--tune-batch-sizes"),
        concurrencies=_ints(args.tune_concurrencies, "--tune-concurrencies"),
        seconds=args.tune_seconds,
        rounds=args.tune_rounds,
        request_images=args.request_images,
        in_flight=args.grpc_max_threads,
        padding_tolerance=args.padding_tolerance,
        signature_name=args.signature_name,
    )
    reports = [Path(args.out) / REPORT_JSON, Path(args.out) / REPORT_PNG]
    try:
        choice = run(tune, args.out)
    except (ValueError, LoadError) as exc:
        raise ConfigError(str(exc)) from None
    except TargetUnreachable as exc:
        print(*reports, sep="\n")
        print(f"xfer-serving-configs: {exc}", file=sys.stderr)
        return None
    print(*reports, sep="\n")
    print(
        f"xfer-serving-configs: batches of up to {choice.max_batch_size} images on "
        f"{choice.num_batch_threads} batch threads, timeout {choice.batch_timeout_micros} us: "
        f"{choice.predicted_images_per_s:.1f} images/s predicted (batching off "
        f"{choice.unbatched_images_per_s:.1f}), p99 {choice.predicted_p99_ms:.0f} ms",
        file=sys.stderr,
    )
    return with_choice(config, choice)


def main(argv: list[str] | None = None) -> int:
    args = parse(
        DeployFlags,
        argv,
        prog="xfer-serving-configs",
        description=__doc__,
        exit_codes=EXIT_CODES,
    )
    try:
        config = DeployConfig(
            model_name=args.model_name,
            container_base_path=args.container_base_path or f"/models/{args.model_name}",
            published_dir=args.published,
            policy=args.policy,
            latest_versions=args.latest_versions,
            labels=args.labels,
            max_batch_size=args.max_batch_size,
            batch_timeout_micros=args.batch_timeout_micros,
            max_enqueued_batches=args.max_enqueued_batches,
            num_batch_threads=args.num_batch_threads,
            allowed_batch_sizes=_ints(args.allowed_batch_sizes, "--allowed-batch-sizes"),
        )
        if args.tune:
            config = _tuned(args, config)
            if config is None:
                return 1
        for path in write_configs(config, args.out):
            print(path)
    except ConfigError as exc:
        print(f"xfer-serving-configs: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
