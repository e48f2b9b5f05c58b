"""The publish gate: load a candidate version exactly as TF Serving does, in a fresh process.

`python -m export.publishing.gate --saved-model DIR --request REQ.json --output OUT.npz` runs
in a new interpreter (no Keras objects, no TF2 caches from the exporter), loads the SavedModel with
`tf.compat.v1.saved_model.loader.load(sess, ["serve"], dir)`, runs every signature through its
SignatureDef tensor names (serving_pixels on the images' pixels, made by the contract's pixel
step as a client makes them), replays the warmup file, checks the contract (docs/architecture.md,
"Exported model") and writes every output for the parent to compare with the in-memory model
(`run_gate`). Given the images of a split and a champion (the version published now), it also
runs `serving_default` of both on those images, for champion.py to compare.

The child dies with the exporter that started it (Linux: `PR_SET_PDEATHSIG`; elsewhere it polls
its parent pid), and the scratch directory `<tmp>/xfer-gate-<pid>-…` a killed exporter leaves is
removed by the next gate run once that pid is gone.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export import fsutil
from export.contract import (
    CLASSIFICATION,
    ENCODED_FEATURE,
    INPUTS,
    METHODS,
    OOD_OUTPUTS,
    OUTPUTS,
    PREPROCESSING_OUTPUT,
    SERVE_TAG,
    SERVING_DEFAULT,
    SERVING_PIXELS,
    WARMUP_FILE,
)
from export.publishing.gate_pixels import check_contract, client_pixels, served_contract

TMP_PREFIX = "xfer-gate-"  # <tempdir>/xfer-gate-<exporter pid>-<random>/
PARENT_PID_ENV = "XFER_GATE_PARENT_PID"  # set by run_gate: the child exits when this pid is gone
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class GateError(RuntimeError):
    """The candidate version must not be published; the message says why."""


@dataclass
class GateReport:
    signatures: list[str]
    warmup_records: int
    max_abs_diff: dict[str, float]
    # serving_default scores on the comparison images: "candidate", and "champion" when it ran
    eval_scores: dict[str, np.ndarray] = field(default_factory=dict)
    champion_error: str | None = None  # why the champion could not be loaded or run

    def to_dict(self) -> dict:
        return {
            "signatures": self.signatures,
            "warmup_records": self.warmup_records,
            "max_abs_diff": self.max_abs_diff,
        }


# ---------------------------------------------------------------- child process (TF1-style load)


def example_bytes(image: bytes) -> bytes:
    """A serialized tf.Example as the classification signature reads it: image/encoded."""
    import tensorflow as tf

    feature = {ENCODED_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _check_outputs(name: str, values: dict, n: int, expect: dict, problems: list[str]) -> None:
    widths = {
        "classes": expect["num_classes"],
        "k": expect["top_k"],
        "features": expect["feature_dim"],
    }
    for output, (dtype, width) in OUTPUTS[name].items():
        if output in OOD_OUTPUTS and not expect.get("ood"):
            continue  # a model without a detector has none
        if output not in values:
            problems.append(f"{name}: missing output {output!r}")
            continue
        value = values[output]
        kind = "string" if value.dtype == object else str(value.dtype)
        if kind != dtype:
            problems.append(f"{name}/{output}: dtype {kind}, expected {dtype}")
        shape = (n,) if width is None else (n, widths[width])
        if value.shape != shape:
            problems.append(f"{name}/{output}: shape {value.shape}, expected {shape}")


def _replay(sess, signatures: dict, log) -> None:
    """One warmup record, run as a server runs it: a Predict with its output filter, or a
    Classify of its tf.Examples."""
    import tensorflow as tf

    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        req = log.predict_log.request
        sig = signatures[req.model_spec.signature_name or "serving_default"]
        feed = {sig.inputs[k].name: tf.make_ndarray(v) for k, v in req.inputs.items()}
        aliases = list(req.output_filter) or list(sig.outputs)
    elif kind == "classify_log":
        req = log.classify_log.request
        sig = signatures[req.model_spec.signature_name]
        examples = [e.SerializeToString() for e in req.input.example_list.examples]
        feed = {next(iter(sig.inputs.values())).name: examples}
        aliases = list(sig.outputs)
    else:
        raise ValueError(f"unexpected warmup log type {kind!r}")
    sess.run({a: sig.outputs[a].name for a in aliases}, feed)


def _scores(sess, signatures: dict, images: list[bytes], batch: int = 32) -> np.ndarray:
    """serving_default's `scores` for `images`, in batches, as a Predict request runs it."""
    sig = signatures[SERVING_DEFAULT]
    feed, fetch = sig.inputs[INPUTS[SERVING_DEFAULT]].name, sig.outputs["scores"].name
    parts = [sess.run(fetch, {feed: images[i : i + batch]}) for i in range(0, len(images), batch)]
    return np.concatenate(parts).astype(np.float32)


def _champion_scores(champion: str, images: list[bytes]) -> np.ndarray:
    """The published champion, loaded as TF Serving loads it, on the comparison images."""
    import tensorflow as tf

    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, [SERVE_TAG], champion)
        return _scores(sess, dict(meta_graph.signature_def), images)


def _child(saved_model: str, request: dict) -> tuple[dict, dict[str, np.ndarray]]:
    import tensorflow as tf

    images = [base64.b64decode(s) for s in request["images"]]
    n = len(images)
    problems: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    warmup = 0
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, [SERVE_TAG], saved_model)
        signatures = {k: v for k, v in meta_graph.signature_def.items() if not k.startswith("__")}
        for name in OUTPUTS:
            if name not in signatures:
                problems.append(f"missing signature {name!r}")
        for name, sig in sorted(signatures.items()):
            if name in METHODS and sig.method_name != METHODS[name]:
                problems.append(
                    f"{name}: method_name {sig.method_name!r}, expected {METHODS[name]!r}"
                )
            input_key = INPUTS.get(name)
            if input_key not in sig.inputs:
                problems.append(f"{name}: no input {input_key!r} (has {sorted(sig.inputs)})")
                continue
            feed = images
            if name == CLASSIFICATION:
                feed = [example_bytes(i) for i in images]
            elif name == SERVING_PIXELS:
                contract = request.get("contract") or served_contract(sess, sig)
                feed = client_pixels(sig, images, contract)
            fetches = {k: v.name for k, v in sig.outputs.items()}
            values = sess.run(fetches, {sig.inputs[input_key].name: feed})
            if name in OUTPUTS:
                _check_outputs(name, values, n, request, problems)
            if name == SERVING_PIXELS and PREPROCESSING_OUTPUT in values:
                check_contract(sig, values[PREPROCESSING_OUTPUT], contract, problems)
            for key, value in values.items():
                if value.dtype != object:
                    arrays[f"{name}/{key}"] = value
                else:
                    arrays[f"{name}/{key}"] = value.astype(str)
        warmup_path = os.path.join(saved_model, "assets.extra", WARMUP_FILE)
        if os.path.exists(warmup_path):
            from tensorflow_serving.apis import prediction_log_pb2

            for record in tf.compat.v1.io.tf_record_iterator(warmup_path):
                try:
                    _replay(sess, signatures, prediction_log_pb2.PredictionLog.FromString(record))
                except Exception as exc:  # noqa: BLE001 - a server would refuse the version too
                    problems.append(f"warmup record {warmup + 1}: {type(exc).__name__}: {exc}")
                warmup += 1
        else:
            problems.append(f"no assets.extra/{WARMUP_FILE}")
        compare_images = [base64.b64decode(s) for s in request.get("eval_images", [])]
        if compare_images and not problems:
            arrays["eval/candidate"] = _scores(sess, signatures, compare_images)
    report = {"signatures": sorted(signatures), "warmup_records": warmup, "problems": problems}
    if "eval/candidate" in arrays and request.get("champion"):
        try:
            arrays["eval/champion"] = _champion_scores(request["champion"], compare_images)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
            lines = str(exc).strip().splitlines() or [""]
            report["champion_error"] = f"{type(exc).__name__}: {lines[-1]}"
    return report, arrays


def _die_with_parent() -> None:
    """Exit as soon as the exporter that started this child is gone (kill -9 included).

    Otherwise an exporter killed during its gate leaves the child loading and querying the model
    for seconds to minutes, an orphan nobody waits for.
    """
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected or not expected.isdigit():
        return  # run by hand, not by run_gate
    parent = int(expected)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
        if armed:
            if os.getppid() != parent:  # the parent died before the signal was armed
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="gate-parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m export.publishing.gate", description=__doc__)
    parser.add_argument("--saved-model", required=True)
    parser.add_argument("--request", required=True, help="JSON: images (base64) and shapes")
    parser.add_argument("--output", required=True, help="npz of every signature output")
    args = parser.parse_args(argv)
    request = json.loads(Path(args.request).read_text())
    report, arrays = _child(args.saved_model, request)
    np.savez(args.output, **arrays)
    print(json.dumps(report))
    return 0


# ---------------------------------------------------------------- parent side


def run_gate(
    saved_model: str | Path,
    images: list[bytes],
    expected_scores: np.ndarray,
    expected_features: np.ndarray,
    *,
    top_k: int,
    tolerance: float = 1e-5,
    contract: str | None = None,
    timeout: float = 600,
    eval_images: list[bytes] = (),
    champion: str | Path | None = None,
    ood=None,
) -> GateReport:
    """Raise GateError unless the candidate loads TF1-style and matches the in-memory model.

    With `eval_images`, the report also holds the candidate's serving_default scores on them,
    and with `champion` (a published version directory) the champion's, or why it failed.
    With `ood` (export/publishing/ood.py's OodDetector), ood_score and is_ood must match it.
    `contract`: serving_pixels' `preprocessing` output as the exporter wrote it (JSON): the
    output must say it, and the images' pixels are made by it, as a client makes them; None
    takes the candidate's own (a client's probe) and checks only that it is a valid one."""
    if not images:
        raise GateError("no images to check the model with")
    num_classes = int(expected_scores.shape[1])
    request = {
        "images": [base64.b64encode(i).decode("ascii") for i in images],
        "num_classes": num_classes,
        "top_k": min(top_k, num_classes),
        "feature_dim": int(expected_features.shape[1]),
        "eval_images": [base64.b64encode(i).decode("ascii") for i in eval_images],
        "champion": str(champion) if champion is not None else None,
        "ood": ood is not None,
        "contract": json.loads(contract) if contract else None,
    }
    # Scratch directories of exporters killed during their gate (kill -9 runs no clean-up).
    fsutil.remove_dead_temporaries(tempfile.gettempdir(), TMP_PREFIX, only_mine=True)
    with tempfile.TemporaryDirectory(prefix=f"{TMP_PREFIX}{os.getpid()}-") as tmp:
        request_path = Path(tmp) / "request.json"
        output_path = Path(tmp) / "outputs.npz"
        request_path.write_text(json.dumps(request))
        cmd = [
            sys.executable,
            "-m",
            "export.publishing.gate",
            "--saved-model",
            str(saved_model),
            "--request",
            str(request_path),
            "--output",
            str(output_path),
        ]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **{PARENT_PID_ENV: str(os.getpid())})
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise GateError(f"loading and querying took longer than {timeout}s") from None
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise GateError(f"TF1-style load (as TF Serving does) failed:\n{tail}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        if report["problems"]:
            raise GateError("contract violated: " + "; ".join(report["problems"]))
        with np.load(output_path) as outputs:
            arrays = {k: outputs[k] for k in outputs.files}

    diffs = {
        "serving_default/scores": float(
            np.max(np.abs(arrays["serving_default/scores"] - expected_scores))
        ),
        "serving_pixels/scores": float(
            np.max(np.abs(arrays["serving_pixels/scores"] - expected_scores))
        ),
        "classification/scores": float(
            np.max(np.abs(arrays["classification/scores"] - expected_scores))
        ),
        "embedding/features": float(
            np.max(np.abs(arrays["embedding/features"] - expected_features))
        ),
    }
    for name, diff in diffs.items():
        scale = 1.0 if "scores" in name else max(1.0, float(np.max(np.abs(expected_features))))
        if not diff <= tolerance * scale:
            raise GateError(
                f"parity: {name} differs from the in-memory model by {diff:.3g} "
                f"(tolerance {tolerance * scale:.3g})"
            )
    if ood is not None:
        from export.publishing.ood import parity_problems

        pair = (SERVING_DEFAULT, SERVING_PIXELS)
        problems = parity_problems(arrays, ood, expected_features, pair, tolerance)
        if problems:
            raise GateError("parity: " + "; ".join(problems))
    top1 = arrays["serving_default/classes"][:, 0]
    if not np.array_equal(top1, np.argmax(arrays["serving_default/scores"], axis=1)):
        raise GateError("serving_default: classes[:, 0] is not the argmax of scores")
    scores = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("eval/")}
    return GateReport(
        report["signatures"],
        report["warmup_records"],
        diffs,
        scores,
        report.get("champion_error"),
    )


if __name__ == "__main__":
    sys.exit(main())
