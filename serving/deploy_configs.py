"""`xfer-serving-configs`: TF Serving config files for a published model, for the container/cluster.

Writes, in protobuf text format built from the real protos (so `tensorflow_model_server` and the
local server parse them alike):
  models.config      ModelServerConfig: the model, its base path *inside the container*, the version
                     policy (latest N, or exactly the versions published now) and version labels
  batching.config    BatchingParameters
  monitoring.config  MonitoringConfig (Prometheus on the REST port)

Each file is written atomically and parsed back with the server's own loaders before it is kept.
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
from serving.flags import parse
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
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 4
    allowed_batch_sizes: tuple[int, ...] = (8, 16, 32)
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
    proto.num_batch_threads.value = config.num_batch_threads
    proto.allowed_batch_sizes.extend(config.allowed_batch_sizes)
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
    max_batch_size: int = _flag(32, "BatchingParameters.max_batch_size")
    batch_timeout_micros: int = _flag(2000, "BatchingParameters.batch_timeout_micros")
    num_batch_threads: int = _flag(4, "BatchingParameters.num_batch_threads")
    allowed_batch_sizes: str = _flag("8,16,32", "BatchingParameters.allowed_batch_sizes")
    out: str = _flag(MISSING, "directory for the three files")


EXIT_CODES = {
    0: "written; their paths are printed on stdout",
    2: "usage or configuration error (bad flags; a file the server would refuse)",
}


def main(argv: list[str] | None = None) -> int:
    args = parse(
        DeployFlags,
        argv,
        prog="xfer-serving-configs",
        description=__doc__,
        exit_codes=EXIT_CODES,
    )
    config = DeployConfig(
        model_name=args.model_name,
        container_base_path=args.container_base_path or f"/models/{args.model_name}",
        published_dir=args.published,
        policy=args.policy,
        latest_versions=args.latest_versions,
        labels=args.labels,
        max_batch_size=args.max_batch_size,
        batch_timeout_micros=args.batch_timeout_micros,
        num_batch_threads=args.num_batch_threads,
        allowed_batch_sizes=tuple(int(x) for x in args.allowed_batch_sizes.split(",") if x),
    )
    try:
        for path in write_configs(config, args.out):
            print(path)
    except ConfigError as exc:
        print(f"xfer-serving-configs: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
