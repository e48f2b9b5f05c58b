from pathlib import Path

import pytest

from serving.config import (
    BatchingOptions,
    ConfigError,
    VersionPolicy,
    load_batching_file,
    load_model_config_file,
)
from serving.deploy_configs import DeployConfig, main, write_configs

ROOT = Path(__file__).parents[2]


def test_committed_configs_are_what_the_generator_writes(tmp_path):
    assert main(["--model-name", "classifier", "--out", str(tmp_path)]) == 0
    for name in ("models.config", "batching.config", "monitoring.config"):
        committed = ROOT / "serving" / "k8s" / "base" / "config" / name
        assert committed.read_text() == (tmp_path / name).read_text(), name


def test_specific_policy_pins_the_published_versions_and_labels(tmp_path):
    published = tmp_path / "models" / "flowers"
    for name in ("1", "2", "4", ".tmp-export-1-x", "notes"):
        (published / name).mkdir(parents=True)
    config = DeployConfig(
        "flowers",
        "/models/flowers",
        str(published),
        policy="specific",
        labels={"stable": 2, "canary": 4},
    )
    write_configs(config, tmp_path / "out")
    [model] = load_model_config_file(str(tmp_path / "out" / "models.config"))
    text = (tmp_path / "out" / "models.config").read_text()
    assert "versions: 1\n" in text and "versions: 4\n" in text and "versions: 3" not in text
    assert model.name == "flowers"
    assert 'key: "canary"' in text and "value: 4" in text
    # As the server reads them back: the container path, exactly the published versions, labels.
    assert model.base_path == "/models/flowers"
    assert model.policy == VersionPolicy("specific", versions=(1, 2, 4))
    assert model.labels == {"stable": 2, "canary": 4}
    # The batching file carries DeployConfig's settings, not the scheduler's defaults.
    batching = load_batching_file(str(tmp_path / "out" / "batching.config"))
    assert batching == BatchingOptions(
        max_batch_size=32,
        batch_timeout_micros=2000,
        max_enqueued_batches=100,
        num_batch_threads=4,
        allowed_batch_sizes=(8, 16, 32),
    )


def test_a_label_must_point_at_a_published_version(tmp_path):
    published = tmp_path / "m"
    (published / "1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="label 'stable' points at version 3, not published"):
        write_configs(
            DeployConfig("m", "/models/m", str(published), labels={"stable": 3}), tmp_path / "out"
        )
    assert not (tmp_path / "out" / "models.config").exists()


def test_cli_usage_error_exits_2(tmp_path, capsys):
    assert main(["--model-name", "m", "--policy", "specific", "--out", str(tmp_path)]) == 2
    assert "give --published" in capsys.readouterr().err
