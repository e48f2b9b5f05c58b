import json
import os
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from testconfig import FAST_TRAINING, TINY

from beam_jobs import bottlenecks
from beam_jobs.bottleneck_output import duplicate_report, metadata_of, publish
from beam_jobs.common import report_metrics
from export.data.dataset import assign_split
from export.features.bottleneck_schema import decode_example
from export.model.backbones import BackboneConfig, build_feature_extractor
from export.model.preprocessing import EagerPreprocessor, Preprocessor

TINY_ARGS = ["--backbone", TINY["backbone"], "--weights", TINY["weights"]]


def read_rows(out) -> list[dict]:
    files = sorted(str(p) for p in out.glob("features-*.tfrecord.gz"))
    dim = json.loads((out / "metadata.json").read_text())["feature_dim"]
    return [
        decode_example(r.numpy(), dim)
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
    ]


def test_pipeline_outputs_errors_duplicates_and_leakage(dup_root, tmp_path):
    """TestPipeline + assert_that on the named outputs: no peeking at files mid-pipeline."""
    red_copy = next(p for p in (dup_root / "red").glob("copy_*"))
    green_copy = next(p for p in (dup_root / "green").glob("copy_*"))
    original = dup_root / "red" / "img_001.png"
    out = tmp_path / "out"
    out.mkdir()
    (out / "features-00007-of-00009.tfrecord.gz").write_bytes(b"an earlier run's shard")
    with test_pipeline.TestPipeline() as p:
        outputs = bottlenecks.run(
            ["--input", str(dup_root), "--output", str(out), *TINY_ARGS, "--num_shards", "3"],
            test_pipeline=p,
        )
        assert_that(
            outputs.errors | beam.Map(lambda e: (os.path.basename(e["uri"]), e["reason"])),
            equal_to(
                [
                    (
                        "notes.txt",
                        "not a decodable image: unknown format (expected JPEG, PNG, GIF or BMP)",
                    ),
                    ("broken.jpg", "not a decodable image: Invalid JPEG data, size 19"),
                    (
                        "empty.png",
                        "not a decodable image: unknown format (expected JPEG, PNG, GIF or BMP)",
                    ),
                ]
            ),
            label="errors",
        )
        copies = sorted([str(original), str(red_copy), str(green_copy)])
        assert_that(
            outputs.duplicates
            | beam.Map(lambda d: (d["kept"], sorted(d["dropped"]), d["leakage"])),
            equal_to([(copies[0], copies[1:], True)]),
            label="duplicates",
        )
        assert_that(
            outputs.rows | beam.combiners.Count.Globally(), equal_to([120]), label="one_copy_kept"
        )
        assert_that(outputs.labels, equal_to([["blue", "green", "red"]]), label="labels")
    # The files: rows are written before the duplicate report exists; the shard holding the
    # dropped copies was rewritten before publishing, and the counts exclude them.
    rows = read_rows(out)
    assert len(rows) == 120
    uris = [r["image/uri"].decode() for r in rows]
    assert copies[0] in uris and not set(copies[1:]) & set(uris)
    meta = json.loads((out / "metadata.json").read_text())
    assert (
        meta["total"] == 120 == sum(n for split in meta["counts"].values() for n in split.values())
    )
    assert [d["kept"] for d in meta["leakage"]] == [copies[0]]
    assert meta["shards"] == [f"features-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    assert sorted(p.name for p in out.glob("features-*")) == meta["shards"], "stale shard kept"
    assert not list(out.glob(".tmp-*")), "the staging directory was left behind"


def test_output_files_schema_and_metadata(bottlenecks_dir, shapes_root):
    out = bottlenecks_dir
    shards = sorted(p.name for p in out.glob("features-*.tfrecord.gz"))
    assert shards == ["features-00000-of-00002.tfrecord.gz", "features-00001-of-00002.tfrecord.gz"]
    assert (out / "labels.txt").read_text() == "blue\ngreen\nred\n"
    assert not list(out.glob(".tmp-*")), "the first pass's temporary shards were left behind"
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["backbone"]["name"] == "tiny" and meta["feature_dim"] == 32
    assert meta["preprocessing_version"] == "3" and meta["errors"] == 2
    assert meta["total"] == 120 and meta["duplicates"] == [] and meta["leakage"] == []
    assert (
        sum(meta["counts"]["train"].values())
        + sum(meta["counts"]["test"].values())
        + sum(meta["counts"]["validation"].values())
        == 120
    )
    assert meta["job_options"]["xfer"]["num_shards"] == 2
    errors = [
        json.loads(line) for p in out.glob("errors-*.jsonl") for line in p.read_text().splitlines()
    ]
    assert sorted(os.path.basename(e["uri"]) for e in errors) == ["broken.jpg", "notes.txt"]
    # metadata.json waits for the error files too, and names them
    assert meta["error_files"] == sorted(p.name for p in out.glob("errors-*.jsonl"))
    rows = read_rows(out)
    assert len(rows) == 120
    row = rows[0]
    uri = row["image/uri"].decode()
    label = row["label"].decode()
    assert uri.startswith(str(shapes_root)) and f"/{label}/" in uri
    assert row["label_id"] == ["blue", "green", "red"].index(label)
    assert row["split"].decode() == assign_split(os.path.basename(uri))
    assert row["backbone"] == b"tiny" and row["features"].shape == (32,)
    import hashlib

    assert row["image/sha256"].decode() == hashlib.sha256(Path(uri).read_bytes()).hexdigest()


def test_feature_parity_with_the_in_process_backbone(bottlenecks_dir):
    rows = read_rows(bottlenecks_dir)
    config = BackboneConfig("tiny", weights="none")
    extractor = build_feature_extractor(config)
    preprocess = EagerPreprocessor(Preprocessor(config))
    images = np.stack([preprocess(Path(r["image/uri"].decode()).read_bytes())[0] for r in rows])
    expected = np.asarray(extractor(images, training=False))
    got = np.stack([r["features"] for r in rows])
    assert np.max(np.abs(got - expected)) <= 1e-5


@pytest.mark.slow
def test_multi_processing_direct_runner_end_to_end(shapes_root, tmp_path, bottlenecks_dir):
    out = tmp_path / "mp"
    bottlenecks.run(
        [
            "--input",
            str(shapes_root),
            "--output",
            str(out),
            *TINY_ARGS,
            "--direct_num_workers=2",
            "--direct_running_mode=multi_processing",
        ]
    )
    by_uri = {r["image/uri"]: r for r in read_rows(out)}
    reference = {r["image/uri"]: r for r in read_rows(bottlenecks_dir)}
    assert set(by_uri) == set(reference)
    for uri, row in by_uri.items():
        assert row["split"] == reference[uri]["split"]
        np.testing.assert_allclose(row["features"], reference[uri]["features"], atol=1e-6)
    assert json.loads((out / "metadata.json").read_text())["errors"] == 2


def test_list_input_with_labels_and_missing_files(shapes_root, tmp_path):
    listing = tmp_path / "list.csv"
    red = sorted((shapes_root / "red").glob("*.png"))[:3]
    blue = sorted((shapes_root / "blue").glob("*.jpg"))[:3]
    lines = ["uri,label"] + [f"{p},red" for p in red] + [f"{p},blue" for p in blue]
    lines += [f"{tmp_path / 'missing.jpg'},blue", f"{red[0]},"]
    listing.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = bottlenecks.run(["--input", str(listing), "--output", str(out), *TINY_ARGS])
    counters = report_metrics(result)
    # 6 read, of which blue/broken.jpg fails to decode; missing.jpg and the unlabelled row fail.
    assert counters["images_read"] == 6 and counters["images_failed"] == 3
    assert counters["batches"] >= 1
    assert counters["batches_redone_per_image"] >= 1  # the broken JPEG shared a batch
    assert sum(counters.get(f"images_{s}", 0) for s in ("train", "validation", "test")) == 5
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["labels"] == ["blue", "red"] and meta["total"] == 5
    errors = {
        json.loads(line)["uri"]: json.loads(line)["reason"]
        for p in out.glob("errors-*.jsonl")
        for line in p.read_text().splitlines()
    }
    assert errors[str(tmp_path / "missing.jpg")].startswith("unreadable:")
    assert errors[str(red[0])] == "no label in the list"
    assert errors[str(blue[0])].startswith("not a decodable image")


def dofn_classes(pipeline) -> list[str]:
    """`module.Class` of every ParDo's DoFn, in graph order."""
    from apache_beam.pipeline import PipelineVisitor

    found = []

    class Visitor(PipelineVisitor):
        def visit_transform(self, node):
            if isinstance(node.transform, beam.ParDo):
                fn = type(node.transform.fn)
                found.append(f"{fn.__module__}.{fn.__qualname__}")

    pipeline.visit(Visitor())
    return found


def test_pipeline_builds_and_pickles_with_dataflow_gpu_options(shapes_root, tmp_path):
    """The graph constructs and every transform pickles as Dataflow would need (no submission)."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    config, rest = bottlenecks.parse_args(
        [
            "--input",
            str(shapes_root),
            "--output",
            str(tmp_path / "out"),
            *TINY_ARGS,
            "--runner",
            "DataflowRunner",
            "--project",
            "xfer-example-project",
            "--region",
            "us-central1",
            "--temp_location",
            "gs://xfer-example-bucket/tmp",
            "--setup_file",
            "./setup.py",
            "--machine_type",
            "n1-standard-8",
            "--dataflow_service_options",
            "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver",
            "--sdk_container_image",
            "us-docker.pkg.dev/xfer-example-project/xfer/beam-gpu:1",
        ]
    )
    options = PipelineOptions(rest)
    pipeline = beam.Pipeline(options=options)
    assert isinstance(pipeline.runner, DataflowRunner)
    bottlenecks.build_pipeline(pipeline, config, bottlenecks.job_info(config, options))
    proto = pipeline.to_runner_api()
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert {
        "Features",
        "EncodeRows",
        "WriteTFRecords",
        "DropCopies",
        "Publish",
        "WriteMetadata",
    } <= {n.split("/")[0] for n in names}
    # What a worker does with the submitted graph: every DoFn unpickles as itself, the job's own
    # among them, and the rebuilt graph serializes to the same transforms.
    rebuilt = beam.Pipeline.from_runner_api(proto, pipeline.runner, options)
    job_dofns = dofn_classes(pipeline)
    assert any(name.startswith("beam_jobs.") for name in job_dofns), job_dofns
    assert dofn_classes(rebuilt) == job_dofns
    again = rebuilt.to_runner_api().components.transforms.values()
    assert {t.unique_name for t in again} == names
    info = bottlenecks.job_info(config, options)
    assert info["job_options"]["pipeline"]["dataflow_service_options"] == [
        "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
    ]


def test_training_from_beam_output_matches_training_from_images(bottlenecks_dir, trained, tmp_path):
    from export.training.config import TrainConfig
    from export.training.train import train

    from_beam = train(
        TrainConfig(bottlenecks=str(bottlenecks_dir), run_dir=str(tmp_path), **FAST_TRAINING)
    )
    a = from_beam.metrics["splits"]["validation"]
    b = trained.metrics["splits"]["validation"]
    assert a["count"] == b["count"]
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.02
    # Same images, labels and splits: the same data hash, wherever the features came from.
    assert from_beam.metrics["data_hash"] == trained.metrics["data_hash"]
    assert from_beam.config.backbone == "tiny" and from_beam.metrics["skipped_count"] == 2


def test_training_refuses_bottlenecks_of_another_preprocessing_version(bottlenecks_dir, tmp_path):
    # Bottlenecks hold features of images preprocessed by the job's version of the contract; a
    # head trained on them and exported with another version would see other pixels.
    import shutil

    from export.training.config import TrainConfig
    from export.training.train import train

    copy = tmp_path / "v1"
    shutil.copytree(bottlenecks_dir, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["preprocessing_version"] = "1"
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="made with preprocessing version 1, but this xfer"):
        train(TrainConfig(bottlenecks=str(copy), run_dir=str(tmp_path / "run"), **FAST_TRAINING))


def test_direct_runner_defaults_to_two_threads_unless_told():
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    def direct(args):
        options = bottlenecks.local_parallelism(PipelineOptions(args), args)
        view = options.view_as(DirectOptions)
        return view.direct_num_workers, view.direct_running_mode

    assert direct([]) == (2, "multi_threading")
    assert direct(["--runner", "DirectRunner"]) == (2, "multi_threading")
    assert direct(["--direct_num_workers=1"]) == (1, "in_memory")
    told = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    assert direct(told) == (2, "multi_processing")
    dataflow = ["--runner", "DataflowRunner", "--project", "p", "--region", "r"]
    assert direct(dataflow) == (1, "in_memory")  # Beam's defaults, untouched


def test_readers_take_the_shards_metadata_lists(bottlenecks_dir, tmp_path):
    """A stray file matching the shard pattern is never read as data."""
    import shutil

    from export.features.sources import TFRecordFeatures

    copy = tmp_path / "copy"
    shutil.copytree(bottlenecks_dir, copy)
    (copy / "features-00009-of-00010.tfrecord.gz").write_bytes(b"not a shard")
    source = TFRecordFeatures(str(copy))
    assert [os.path.basename(f) for f in source.files] == json.loads(
        (copy / "metadata.json").read_text()
    )["shards"]
    assert sum(1 for _ in source.rows()) == 120


def test_publishing_again_after_a_retry_moves_nothing_twice(tmp_path):
    staging, out = tmp_path / "staging", tmp_path / "out"
    staging.mkdir()
    out.mkdir()
    shards = [str(staging / f"features-0000{i}-of-00002.tfrecord.gz") for i in range(2)]
    for i, shard in enumerate(shards):
        Path(shard).write_bytes(b"shard %d" % i)
    (out / "features-00005-of-00006.tfrecord.gz").write_bytes(b"stale")
    first = publish(None, shards, str(out))
    assert publish(None, shards, str(out)) == first  # a retried step
    assert sorted(p.name for p in out.iterdir()) == [os.path.basename(s) for s in shards]
    assert (out / "features-00001-of-00002.tfrecord.gz").read_bytes() == b"shard 1"
    (out / "features-00000-of-00002.tfrecord.gz").unlink()
    with pytest.raises(OSError, match="neither staged nor published"):
        publish(None, shards, str(out))


def test_duplicate_report_keeps_the_smallest_uri_and_flags_copies_across_splits():
    assert duplicate_report("h", [("b.png", "train")]) is None
    report = duplicate_report("h", [("c.png", "test"), ("a.png", "train"), ("b.png", "train")])
    assert report == {
        "sha256": "h",
        "kept": "a.png",
        "dropped": ["b.png", "c.png"],
        "splits": ["test", "train"],
        "leakage": True,
    }
    assert not duplicate_report("h", [("b", "train"), ("a", "train")])["leakage"]


def test_metadata_sums_the_stats_a_removed_copy_cancelled():
    stats = [
        (("count", "train", "red"), 3),
        (("count", "test", "red"), 0),  # a copy written, then dropped: no empty entry
        (("copies",), 4),
        (("errors",), 2),
        (("dim", 32), 1),
    ]
    leak = {"kept": "a", "leakage": True}
    meta = metadata_of(
        ["s/features-1.gz", "s/features-0.gz"],
        ["o/errors-0.jsonl"],
        ["red"],
        stats,
        [{"kept": "b", "leakage": False}, leak],
        {"backbone": "tiny"},
    )
    assert meta["counts"] == {"train": {"red": 3}} and meta["total"] == 3
    assert (meta["augmented_copies"], meta["errors"], meta["feature_dim"]) == (4, 2, 32)
    assert [d["kept"] for d in meta["duplicates"]] == ["a", "b"] and meta["leakage"] == [leak]
    assert meta["shards"] == ["features-0.gz", "features-1.gz"]
    assert meta["error_files"] == ["errors-0.jsonl"] and meta["backbone"] == "tiny"


def test_the_flags_build_the_configs_with_their_own_defaults():
    """beam_jobs/flags.py (read by --help) and the jobs' configs agree on names and defaults."""
    import dataclasses

    from beam_jobs import predict
    from beam_jobs.flags import BottleneckFlags, PredictFlags

    flags = dataclasses.asdict(BottleneckFlags(input="i", output="o"))
    assert bottlenecks.BottleneckConfig(**flags) == bottlenecks.BottleneckConfig("i", "o")
    flags = dataclasses.asdict(PredictFlags(input="i", model_dir="m", output="o"))
    assert predict.PredictConfig(**flags) == predict.PredictConfig("i", "m", "o")


def test_cached_epochs_train_the_head_as_streamed_ones(bottlenecks_dir, monkeypatch):
    """Holding the features in memory after the first epoch changes nothing but the time: the
    same rows in the same shuffled order, so the same head, whether cached or streamed."""
    import numpy as np

    from export.features.sources import TFRecordFeatures
    from export.training import train as training
    from export.training.config import TrainConfig

    source = TFRecordFeatures(str(bottlenecks_dir))
    assert 0 < training.feature_bytes(source) <= training.CACHE_BYTES
    config = TrainConfig(bottlenecks=str(bottlenecks_dir), epochs=3, patience=10, progress=False)
    mean, variance, _ = training.train_moments(source, 64)
    runs = {}
    for budget in (training.CACHE_BYTES, 0):  # cached, then streamed every epoch
        monkeypatch.setattr(training, "CACHE_BYTES", budget)
        head, history, _ = training.fit_head(config, source, mean, variance)
        runs[budget] = (history, [w.copy() for w in head.get_weights()])
    (cached, cached_weights), (streamed, streamed_weights) = runs.values()
    assert cached["loss"] == streamed["loss"] and len(cached["loss"]) == 3
    for a, b in zip(cached_weights, streamed_weights):
        np.testing.assert_array_equal(a, b)
