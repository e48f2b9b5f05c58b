"""The servable: preprocessing + backbone + head as one SavedModel with TF Serving signatures.

Layout of a version directory (docs/architecture.md, "Exported model"):
  saved_model.pb, variables/       keras.export.ExportArchive (loads TF1-style, as TF Serving does)
  assets/labels.txt                   one class name per line, index = class id
  assets.extra/model_card.json        what was trained on what, and how well
  assets.extra/tf_serving_warmup_requests   PredictionLog records of real validation images

Signatures: serving_default (encoded bytes), serving_pixels (the same model on uint8 pixels made by
the contract's pixel step, for clients that preprocess), classification, embedding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.protobuf import saved_model_pb2

from export import fsutil
from export.contract import (
    CLASSIFICATION,
    CLASSIFY_INPUT_KEY,
    CLASSIFY_METHOD,
    CLIENT_OUTPUT_FILTER,
    CLIENT_PIXELS_OUTPUT_FILTER,
    EMBEDDING,
    ENCODED_FEATURE,
    INPUT_KEY,
    IS_OOD,
    LABELS_FILE,
    MODEL_CARD_FILE,
    OOD_OUTPUTS,
    OOD_SCORE,
    PIXELS_INPUT_KEY,
    PREPROCESSING_OUTPUT,
    SERVING_DEFAULT,
    SERVING_PIXELS,
    WARMUP_FILE,
)
from export.model.preprocessing import Preprocessor
from export.publishing.gate import example_bytes
from export.publishing.ood import OodDetector


def _on_batch(model: keras.Model):
    """`model(images)` that answers an empty batch with an empty [0, D] result: TensorFlow's CPU
    kernels do not all accept a zero-size batch (a convolution then fails with "Incompatible
    shapes: [32] vs. [0,224,224,3]"), and a request with no images is not an error."""
    dim = int(model.output.shape[-1])

    def call(images):
        return tf.cond(
            tf.shape(images)[0] > 0,
            lambda: model(images, training=False),
            lambda: tf.zeros([0, dim], tf.float32),
        )

    return call


def _ood_outputs(detector: OodDetector):
    """features -> {ood_score, is_ood}: export/publishing/ood.py's `scores`, in float32 ops."""
    whitening = tf.constant(detector.whitening, tf.float32)
    means = tf.constant(detector.means, tf.float32)
    threshold = tf.constant(detector.threshold, tf.float32)

    def outputs(features):
        # The nearest mean from the expanded form ([N, K] memory, not [N, K, D]), then its
        # distance by subtraction: float32 cancellation in ‖z‖² − 2 z·μ + ‖μ‖² could move a
        # score by more than the gate's tolerance, a near tie in the argmin cannot.
        z = tf.matmul(features, whitening)
        expanded = (
            tf.reduce_sum(tf.square(z), axis=1, keepdims=True)
            - 2.0 * tf.matmul(z, means, transpose_b=True)
            + tf.reduce_sum(tf.square(means), axis=1)[None, :]
        )
        nearest = tf.gather(means, tf.argmin(expanded, axis=1))
        score = tf.reduce_sum(tf.square(z - nearest), axis=1)
        return {OOD_SCORE: score, IS_OOD: score > threshold}

    return outputs


def pixels_contract(preprocessor: Preprocessor) -> str:
    """serving_pixels' `preprocessing` output: what a client's pixel step must be, as compact
    JSON (the model card's `preprocessing` holds the same values and their descriptions). A
    center_crop model adds `resize`, `crop_padding` and `interpolation`; a squash model's is
    version 3's, to the byte."""
    described = preprocessor.describe()
    return json.dumps(
        {
            **{key: described[key] for key in ("version", "image_size", "max_pixels")},
            **preprocessor.resize.contract_fields(),
        },
        separators=(",", ":"),
    )


def _endpoints(
    classifier: keras.Model,
    extractor: keras.Model,
    preprocessor: Preprocessor,
    labels: Sequence[str],
    top_k: int,
    ood: OodDetector | None = None,
):
    label_table = tf.constant(list(labels), tf.string)
    k = min(top_k, len(labels))
    classify, embed = _on_batch(classifier), _on_batch(extractor)

    if ood is not None:
        # One backbone pass for both: the features feed the head and the detector.
        joint = keras.Model(extractor.input, [extractor.output, classifier.output])
        dim = int(extractor.output.shape[-1])
        detect = _ood_outputs(ood)

    def predictions(images):
        extra = {}
        if ood is None:
            scores = classify(images)
        else:
            features, scores = tf.cond(
                tf.shape(images)[0] > 0,
                lambda: tuple(joint(images, training=False)),
                lambda: (tf.zeros([0, dim]), tf.zeros([0, int(classifier.output.shape[-1])])),
            )
            extra = detect(features)
        top = tf.math.top_k(scores, k=k)
        return {
            "scores": scores,
            "classes": top.indices,
            "labels": tf.gather(label_table, top.indices),
            "top_scores": top.values,
            **extra,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)])
    def serving_default(image_bytes):
        return predictions(preprocessor.batch(image_bytes))

    size = preprocessor.image_size
    contract = tf.constant(pixels_contract(preprocessor))

    @tf.function(
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=PIXELS_INPUT_KEY)]
    )
    def serving_pixels(pixels):
        """The pixels `image_pixels` makes, from a client: only the normalisation is left."""
        outputs = predictions(preprocessor.normalise(pixels))
        return {**outputs, PREPROCESSING_OUTPUT: tf.fill(tf.shape(pixels)[:1], contract)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUT_KEY)])
    def classification(inputs):
        parsed = tf.io.parse_example(
            inputs, {ENCODED_FEATURE: tf.io.FixedLenFeature([], tf.string)}
        )
        scores = classify(preprocessor.batch(parsed[ENCODED_FEATURE]))
        classes = tf.broadcast_to(label_table, tf.shape(scores))
        return {"classes": classes, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)])
    def embedding(image_bytes):
        return {"features": embed(preprocessor.batch(image_bytes))}

    return {
        SERVING_DEFAULT: serving_default,
        SERVING_PIXELS: serving_pixels,
        CLASSIFICATION: classification,
        EMBEDDING: embedding,
    }


def set_method_name(saved_model_dir: str | Path, signature: str, method_name: str) -> None:
    """Keras/TF2 export marks every signature as Predict; TF Serving's Classify API needs this."""
    path = Path(saved_model_dir) / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(path.read_bytes())
    for meta_graph in proto.meta_graphs:
        if signature in meta_graph.signature_def:
            meta_graph.signature_def[signature].method_name = method_name
    fsutil.atomic_write_bytes(path, proto.SerializeToString())


def write_saved_model(
    directory: str | Path,
    classifier: keras.Model,
    extractor: keras.Model,
    preprocessor: Preprocessor,
    labels: Sequence[str],
    top_k: int = 5,
    ood: OodDetector | None = None,
) -> None:
    archive = keras.export.ExportArchive()
    archive.track(classifier)
    endpoints = _endpoints(classifier, extractor, preprocessor, labels, top_k, ood)
    for name, fn in endpoints.items():
        archive.add_endpoint(name, fn)
    archive.write_out(str(directory), verbose=False)
    set_method_name(directory, CLASSIFICATION, CLASSIFY_METHOD)
    fsutil.atomic_write_text(Path(directory) / "assets" / LABELS_FILE, "\n".join(labels) + "\n")


def warmup_records(
    model_name: str, images: Sequence[bytes], pixels: np.ndarray, ood: bool = False
) -> list[bytes]:
    """Serialized PredictionLog records, for one batch of all images and for the first one alone:
    every signature, and serving_default and serving_pixels both whole and with the output filter
    xfer-score sends (a server builds one callable per signature and filter; each is built here,
    at load). `pixels`: the images' uint8 pixels (export.model.pixels.image_pixels). With `ood`,
    the filters xfer-score sends to a model with the OOD outputs too."""
    from tensorflow_serving.apis import (
        classification_pb2,
        input_pb2,
        model_pb2,
        predict_pb2,
        prediction_log_pb2,
    )

    def predict(batch, signature, output_filter=()):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature),
            output_filter=list(output_filter),
        )
        if signature == SERVING_PIXELS:
            tensor = tf.make_tensor_proto(pixels[: len(batch)], dtype=tf.uint8)
            request.inputs[PIXELS_INPUT_KEY].CopyFrom(tensor)
        else:
            request.inputs[INPUT_KEY].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
        return prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )

    def classify(batch):
        examples = input_pb2.ExampleList(
            examples=[example_pb2.Example.FromString(example_bytes(i)) for i in batch]
        )
        request = classification_pb2.ClassificationRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=CLASSIFICATION),
            input=input_pb2.Input(example_list=examples),
        )
        return prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=request)
        )

    batches = [list(images)] + ([list(images[:1])] if len(images) > 1 else [])
    logs = []
    for batch in batches:
        logs += [
            predict(batch, SERVING_DEFAULT),
            predict(batch, SERVING_DEFAULT, CLIENT_OUTPUT_FILTER),
            predict(batch, SERVING_PIXELS),
            predict(batch, SERVING_PIXELS, CLIENT_PIXELS_OUTPUT_FILTER),
            *(
                [
                    predict(batch, SERVING_DEFAULT, (*CLIENT_OUTPUT_FILTER, *OOD_OUTPUTS)),
                    predict(batch, SERVING_PIXELS, (*CLIENT_PIXELS_OUTPUT_FILTER, *OOD_OUTPUTS)),
                ]
                if ood
                else []
            ),
            predict(batch, EMBEDDING),
            classify(batch),
        ]
    return [log.SerializeToString() for log in logs]


def write_warmup(
    directory: str | Path,
    model_name: str,
    images: Sequence[bytes],
    pixels: np.ndarray,
    ood: bool = False,
) -> None:
    extra = Path(directory) / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    target = extra / WARMUP_FILE
    tmp = extra / f".{WARMUP_FILE}.{os.getpid()}.tmp"
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for record in warmup_records(model_name, images, pixels, ood):
            writer.write(record)
    os.replace(tmp, target)


def write_model_card(directory: str | Path, card: dict) -> None:
    fsutil.atomic_write_json(Path(directory) / "assets.extra" / MODEL_CARD_FILE, card)


def read_labels(version_dir: str | Path) -> list[str]:
    text = (Path(version_dir) / "assets" / LABELS_FILE).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]
