"""TensorFlow Serving's test models, written here with the graphs of its own generator scripts.

tensorflow_serving/servables/tensorflow/testdata/saved_model_half_plus_two.py (TF1 graph through
tf.compat.v1, and the native TF2 `HalfPlusTwoModel`) and export_bad_half_plus_two.py, so the
ported tests exercise the same SavedModels as upstream without copying its binary files:

  saved_model_half_plus_two_cpu/00000123      y = 0.5*x + 2; serving_default, classify_x_to_y,
                                              regress_x_to_y, regress_x_to_y2, regress_x2_to_y3
  saved_model_half_plus_two_tf2_cpu/00000123  the TF2 module (+ classify_x2_to_y3)
  saved_model_half_plus_three/00000123        y = 0.5*x + 3
  saved_model_half_plus_two_2_versions/00000123 and /00000124   (+ classify_x2_to_y3)
  bad_half_plus_two/00000123                  a SessionBundle export: no saved_model.pb
  good_model_config.txt, bad_model_config.txt, monitoring_config.txt, batching_config.txt

The serialized-example placeholder has no declared shape (unknown rank) and x, x2 are [-1, 1], as
in the SavedModels upstream checked in and their metadata JSON files (the tests compare against
those): the TensorFlow that wrote them inferred [-1, 1] from parse_example, today's infers nothing,
so the shape is set.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

VERSION = 123
LARGER_VERSION = 124

GOOD_MODEL_CONFIG = """model_config_list: {
  config: {
    name: "half_plus_two",
    base_path: "${TEST_HALF_PLUS_TWO_DIR}",
    model_platform: "tensorflow"
  },
  config: {
    name: "half_plus_three",
    base_path: "${TEST_HALF_PLUS_THREE_DIR}",
    model_platform: "tensorflow"
  }
}
"""
BAD_MODEL_CONFIG = "improperly formatted file\n"
MONITORING_CONFIG = """prometheus_config: {
  enable: true,
  path: "/monitoring/prometheus/metrics"
}
"""
BATCHING_CONFIG = """max_batch_size { value: 128 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000000 }
num_batch_threads { value: 8 }
"""


def _feature_spec(tf):
    return {
        "x": tf.io.FixedLenFeature([1], dtype=tf.float32),
        "x2": tf.io.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0]),
    }


def write_half_plus_two(export_dir: Path, b: float = 2.0, classify_x2: bool = False) -> None:
    """`_generate_saved_model_for_half_plus_two(export_dir)` (TF1, CPU): y = a*x + b."""
    import tensorflow as tf

    v1 = tf.compat.v1
    build = v1.saved_model.utils.build_tensor_info
    sigs = v1.saved_model.signature_def_utils.build_signature_def
    const = v1.saved_model.signature_constants

    def signature(inputs: dict, outputs: dict, method: str):
        return sigs(
            {k: build(v) for k, v in inputs.items()},
            {k: build(v) for k, v in outputs.items()},
            method,
        )

    asset_path = Path(tempfile.mkdtemp(prefix="half-plus-two-assets-")) / "foo.txt"
    asset_path.write_text("asset-file-contents")

    builder = v1.saved_model.builder.SavedModelBuilder(str(export_dir))
    with tf.Graph().as_default(), v1.Session() as sess:
        a = v1.Variable(0.5, name="a")
        b_var = v1.Variable(b, name="b")
        c = v1.Variable(3.0, name="c")
        serialized = v1.placeholder(tf.string, name="tf_example")
        parsed = v1.parse_example(serialized, _feature_spec(tf))
        for name in ("x", "x2"):  # what the TensorFlow of upstream's files inferred
            parsed[name].set_shape([None, 1])
        x = tf.identity(parsed["x"], name="x")
        y = tf.identity(tf.add(tf.multiply(a, x), b_var), name="y")
        y2 = tf.identity(tf.add(tf.multiply(a, x), c), name="y2")
        x2 = tf.identity(parsed["x2"], name="x2")
        a2 = v1.Variable(0.5, name="a2")
        c2 = v1.Variable(3.0, name="c2")
        y3 = tf.identity(tf.add(tf.multiply(a2, x2), c2), name="y3")

        filepath = tf.constant(str(asset_path))
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, filepath)
        filename = v1.Variable("foo.txt", name="filename_tensor", trainable=False, collections=[])
        assign_filename = filename.assign("foo.txt")

        regress, classify = const.REGRESS_METHOD_NAME, const.CLASSIFY_METHOD_NAME
        signatures = {
            "regress_x_to_y": signature({"inputs": serialized}, {"outputs": y}, regress),
            "regress_x_to_y2": signature({"inputs": serialized}, {"outputs": y2}, regress),
            "regress_x2_to_y3": signature({"inputs": x2}, {"outputs": y3}, regress),
            "classify_x_to_y": signature({"inputs": serialized}, {"scores": y}, classify),
            const.DEFAULT_SERVING_SIGNATURE_DEF_KEY: signature(
                {"x": x}, {"y": y}, const.PREDICT_METHOD_NAME
            ),
        }
        if classify_x2:
            signatures["classify_x2_to_y3"] = signature({"inputs": x2}, {"scores": y3}, classify)
        sess.run(v1.global_variables_initializer())
        builder.add_meta_graph_and_variables(
            sess,
            [v1.saved_model.tag_constants.SERVING],
            signature_def_map=signatures,
            assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
            main_op=tf.group(assign_filename),
        )
    builder.save()


def write_half_plus_two_tf2(export_dir: Path) -> None:
    """`_generate_saved_model_for_half_plus_two(export_dir, tf2=True)`: the native TF2 module."""
    import tensorflow as tf

    spec = _feature_spec(tf)

    class HalfPlusTwoModel(tf.Module):
        def __init__(self):
            super().__init__()
            self.a = tf.Variable(0.5, name="a")
            self.b = tf.Variable(2.0, name="b")
            self.c = tf.Variable(3.0, name="c")

        def compute(self, x, inc):
            return tf.add(tf.multiply(self.a, x), inc)

        @tf.function(input_signature=[tf.TensorSpec(shape=[1], dtype=tf.float32)])
        def predict(self, x):
            return {"y": self.compute(x, self.b)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress_xy(self, serialized):
            return {"outputs": self.compute(tf.io.parse_example(serialized, spec)["x"], self.b)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress_xy2(self, serialized):
            return {"outputs": self.compute(tf.io.parse_example(serialized, spec)["x"], self.c)}

        @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="inputs")])
        def regress_x2y3(self, x2):
            return {"outputs": self.compute(x2, self.c)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify_xy(self, serialized):
            return {"scores": self.compute(tf.io.parse_example(serialized, spec)["x"], self.b)}

        @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="inputs")])
        def classify_x2y3(self, x2):
            return {"scores": self.compute(x2, self.c)}

    model = HalfPlusTwoModel()
    tf.saved_model.save(
        model,
        str(export_dir),
        signatures={
            "regress_x_to_y": model.regress_xy,
            "regress_x_to_y2": model.regress_xy2,
            "regress_x2_to_y3": model.regress_x2y3,
            "classify_x_to_y": model.classify_xy,
            "classify_x2_to_y3": model.classify_x2y3,
            "serving_default": model.predict,
        },
    )


def write_bad_half_plus_two(export_dir: Path) -> None:
    """export_bad_half_plus_two.py: a checkpoint and export.meta, no SavedModel, no signatures."""
    import tensorflow as tf

    v1 = tf.compat.v1
    export_dir.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default(), v1.Session() as sess:
        a = v1.Variable(0.5)
        b = v1.Variable(2.0)
        x = v1.placeholder(tf.float32)
        tf.add(tf.multiply(a, x), b)
        sess.run(v1.global_variables_initializer())
        saver = v1.train.Saver()
        saver.export_meta_graph(filename=str(export_dir / "export.meta"))
        saver.save(sess, str(export_dir / "export"), write_meta_graph=False)


def write_testdata(root: Path) -> Path:
    """Everything under `root`, laid out as upstream's testdata/ directory."""
    write_half_plus_two(root / "saved_model_half_plus_two_cpu" / f"{VERSION:08d}")
    write_half_plus_two_tf2(root / "saved_model_half_plus_two_tf2_cpu" / f"{VERSION:08d}")
    write_half_plus_two(root / "saved_model_half_plus_three" / f"{VERSION:08d}", b=3.0)
    for version in (VERSION, LARGER_VERSION):
        write_half_plus_two(
            root / "saved_model_half_plus_two_2_versions" / f"{version:08d}", classify_x2=True
        )
    write_bad_half_plus_two(root / "bad_half_plus_two" / f"{VERSION:08d}")
    (root / "good_model_config.txt").write_text(GOOD_MODEL_CONFIG)
    (root / "bad_model_config.txt").write_text(BAD_MODEL_CONFIG)
    (root / "monitoring_config.txt").write_text(MONITORING_CONFIG)
    (root / "batching_config.txt").write_text(BATCHING_CONFIG)
    return root


if __name__ == "__main__":  # write the models for a server started by hand
    import sys

    print(write_testdata(Path(sys.argv[1]).resolve()))
