"""Flags and TF Serving config files: parsed with the real protos, bad files named with line."""

from __future__ import annotations

import pytest

from serving.cli import main
from serving.config import (
    ConfigError,
    VersionPolicy,
    load_batching_file,
    load_model_config_file,
    load_monitoring_file,
    resolve,
)
from serving.flags import parse_flags
from serving.versions import aspired_versions, version_dirs

MODELS = """model_config_list {
  config {
    name: "a"
    base_path: "/models/a"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
  }
  config {
    name: "b"
    base_path: "/models/b"
    model_version_policy { specific { versions: 3 versions: 1 } }
    version_labels { key: "stable" value: 1 }
  }
  config { name: "c" base_path: "/models/c" model_version_policy { all {} } }
}
"""


def test_model_config_file(tmp_path):
    path = tmp_path / "models.config"
    path.write_text(MODELS)
    a, b, c = load_model_config_file(str(path))
    assert (a.name, a.base_path, a.policy) == ("a", "/models/a", VersionPolicy("latest", 2))
    assert b.policy == VersionPolicy("specific", versions=(1, 3)) and b.labels == {"stable": 1}
    assert c.policy.kind == "all"


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ('model_config_list {\n  config {\n    name: "a"\n    bogus: 1\n  }\n}\n', 4, "bogus"),
        ('model_config_list {\n  config { name: "a" base_path: "/m"\n', 2, "Expected"),
        ('model_config_list {\n  config { name: "a" }\n}\n', 2, "no base_path"),
        (
            'model_config_list {\n config { name: "a" base_path: "/x" }\n'
            ' config { name: "a" base_path: "/y" }\n}\n',
            2,
            "duplicate",
        ),
    ],
    ids=["unknown-field", "truncated", "no-base-path", "duplicate"],
)
def test_bad_model_config_names_file_and_line(tmp_path, text, line, fragment):
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_model_config_file(str(path))
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert fragment in str(info.value)


def test_batching_and_monitoring_files(tmp_path):
    batching = tmp_path / "batching.config"
    batching.write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\n"
        "allowed_batch_sizes: 4\nallowed_batch_sizes: 16\npad_variable_length_inputs: true\n"
    )
    options = load_batching_file(str(batching))
    assert (options.max_batch_size, options.batch_timeout_micros) == (16, 500)
    assert options.allowed_batch_sizes == (4, 16) and options.max_enqueued_batches == 10
    batching.write_text("max_batch_size { value: 16 }\nallowed_batch_sizes: 8\n")
    with pytest.raises(ConfigError, match=r"batching.config:2: Last entry in allowed_batch_sizes"):
        load_batching_file(str(batching))
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config {\n  enable: true\n  path: "/metrics"\n}\n')
    assert load_monitoring_file(str(monitoring)).prometheus_path == "/metrics"
    monitoring.write_text("prometheus_config {\n  enable: yes_please\n}\n")
    with pytest.raises(ConfigError, match=r"monitoring.config:2: "):
        load_monitoring_file(str(monitoring))


def test_flags_as_tensorflow_model_server():
    flags = parse_flags(["--port=9000", "--rest_api_port", "9001", "--model_base_path=/m"])
    assert (flags.port, flags.rest_api_port, flags.model_name) == (9000, 9001, "default")
    assert parse_flags(["--enable_batching"]).enable_batching is True
    assert parse_flags(["--enable_batching=false"]).enable_batching is False
    with pytest.raises(ConfigError, match="without --enable_batching"):
        resolve(parse_flags(["--model_base_path=/m", "--batching_parameters_file=/b"]))
    with pytest.raises(ConfigError, match="Both --model_base_path and --model_config_file"):
        resolve(parse_flags([]))
    config = resolve(parse_flags(["--model_base_path=/m", "--grpc_max_message_bytes=1024"]))
    assert ("grpc.max_receive_message_length", 1024) in config.channel_options


def test_main_refuses_a_bad_config_at_start_up(tmp_path, capsys):
    path = tmp_path / "models.config"
    path.write_text('model_config_list {\n  config {\n    nme: "a"\n  }\n}\n')
    assert main([f"--model_config_file={path}"]) == 2
    assert f"{path}:3: " in capsys.readouterr().err


def test_only_integer_directories_are_versions(tmp_path):
    for name in ("1", "0010", ".tmp-export-1-x", "3.tmp", "latest"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a directory")
    assert sorted(version_dirs(tmp_path)) == [1, 10]


def test_version_policies():
    assert aspired_versions([1, 5, 3], VersionPolicy()) == [5]
    assert aspired_versions([1, 5, 3], VersionPolicy("latest", 2)) == [3, 5]
    assert aspired_versions([1, 5, 3], VersionPolicy("all")) == [1, 3, 5]
    assert aspired_versions([1, 5, 3], VersionPolicy("specific", versions=(3, 4))) == [3]
    assert aspired_versions([], VersionPolicy()) == []


def test_large_batch_splitting_options(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text(
        "max_batch_size { value: 32 }\n"
        "enable_large_batch_splitting { value: true }\n"
        "max_execution_batch_size { value: 4 }\n"
    )
    options = load_batching_file(str(path))
    assert options.enable_large_batch_splitting and options.execution_batch_size == 4
    path.write_text("max_batch_size { value: 32 }\nmax_execution_batch_size { value: 64 }\n")
    with pytest.raises(ConfigError, match=r"batching.config:2: max_execution_batch_size must"):
        load_batching_file(str(path))
    path.write_text("max_batch_size { value: 32 }\nmax_execution_batch_size { value: 4 }\n")
    assert load_batching_file(str(path)).execution_batch_size == 32  # only with splitting on
