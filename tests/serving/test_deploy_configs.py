from pathlib import Path

import pytest

from serving.batch_tuning import Choice
from serving.config import (
    BatchingOptions,
    ConfigError,
    VersionPolicy,
    load_batching_file,
    load_model_config_file,
)
from serving.deploy_configs import DeployConfig, main, with_choice, write_configs
from serving.flags import CPUS

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
    # The batching defaults (docs/serving.md#batching): no padding, no waiting for company,
    # 4 batches at once, requests of up to 32 images (xfer-score's default batch).
    batching = load_batching_file(str(tmp_path / "out" / "batching.config"))
    assert batching == BatchingOptions(
        max_batch_size=32,
        batch_timeout_micros=0,
        max_enqueued_batches=100,
        num_batch_threads=4,
        allowed_batch_sizes=(),
    )
    # None leaves the field out: the server's own default, its number of cores.
    write_configs(DeployConfig("m", "/models/m", num_batch_threads=None), tmp_path / "cores")
    assert load_batching_file(str(tmp_path / "cores" / "batching.config")).num_batch_threads == CPUS


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


def choice(max_batch: int, allowed: tuple[int, ...] = ()) -> Choice:
    return Choice(max_batch, 1, 0, allowed, max_batch, 100.0, 50.0, 80.0, 1.0, 20.0)


def test_a_tuned_batch_below_the_largest_request_splits_requests(tmp_path):
    small = with_choice(DeployConfig("m", "/models/m"), choice(4, (2, 4)))
    write_configs(small, tmp_path / "small")
    options = load_batching_file(str(tmp_path / "small" / "batching.config"))
    # Requests of up to 32 images are still accepted, run in batches of at most 4 rows; the
    # allowed sizes end at max_batch_size, as TF Serving requires.
    assert (options.max_batch_size, options.execution_batch_size) == (32, 4)
    assert options.enable_large_batch_splitting
    assert options.allowed_batch_sizes == (2, 4, 32)
    large = with_choice(DeployConfig("m", "/models/m"), choice(64))
    write_configs(large, tmp_path / "large")
    options = load_batching_file(str(tmp_path / "large" / "batching.config"))
    assert (options.max_batch_size, options.execution_batch_size) == (64, 64)
    assert not options.enable_large_batch_splitting
