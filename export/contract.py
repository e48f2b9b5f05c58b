"""Names of the exported model's interface, defined once, here.

The interface itself: docs/architecture.md, "Exported model".

Importing this module is cheap (no TensorFlow), so the gate, the server and scripts can share it.
"""

INPUT_KEY = "image_bytes"
CLASSIFY_INPUT_KEY = "inputs"
ENCODED_FEATURE = "image/encoded"
SERVING_DEFAULT = "serving_default"
# The same model on the contract's pixels (uint8 [-1, S, S, 3], export/model/pixels.py) instead of
# encoded bytes: what `xfer-score --preprocess client` sends (client/config.py keeps copies of
# these names, checked equal).
SERVING_PIXELS = "serving_pixels"
PIXELS_INPUT_KEY = "pixels"
# serving_pixels' output naming, per image, the contract its pixels must follow: compact JSON of
# `version`, `image_size` and `max_pixels` (the parameters a client's pixel step needs).
PREPROCESSING_OUTPUT = "preprocessing"
CLASSIFICATION = "classification"
EMBEDDING = "embedding"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
SERVE_TAG = "serve"
WARMUP_FILE = "tf_serving_warmup_requests"
# Name scope of the decode step inside the exported graph: a server tells a refused image from
# a model error by the failing node's name (serving/errors.py keeps a copy, checked equal).
DECODE_SCOPE = "decode_images"
# The outputs xfer-score asks serving_default for (client/transport.py OUTPUTS, checked equal): the
# warmup file replays requests with this output filter too, since each new filter costs a server
# a new callable (1-5 s) on its first request.
CLIENT_OUTPUT_FILTER = ("labels", "top_scores")
# The outputs xfer-score asks serving_pixels for (client/transport.py PIXELS_OUTPUTS, checked
# equal), warmed up for the same reason.
CLIENT_PIXELS_OUTPUT_FILTER = (*CLIENT_OUTPUT_FILTER, PREPROCESSING_OUTPUT)
# serving_default's and serving_pixels' out-of-distribution outputs (export/publishing/ood.py):
# present when the model card has an `ood` section; a client asks for them only then.
OOD_SCORE = "ood_score"
IS_OOD = "is_ood"
OOD_OUTPUTS = (OOD_SCORE, IS_OOD)
MODEL_CARD_FILE = "model_card.json"
LABELS_FILE = "labels.txt"
# File name endings of the formats the preprocessing contract decodes.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")

# signature -> output name -> (dtype name, rank-2 width: "classes" | "k" | "features", or None
# for a rank-1 output: one value per image)
_PREDICT_OUTPUTS = {
    "scores": ("float32", "classes"),
    "classes": ("int32", "k"),
    "labels": ("string", "k"),
    "top_scores": ("float32", "k"),
    OOD_SCORE: ("float32", None),
    IS_OOD: ("bool", None),
}
OUTPUTS = {
    SERVING_DEFAULT: _PREDICT_OUTPUTS,
    SERVING_PIXELS: {**_PREDICT_OUTPUTS, PREPROCESSING_OUTPUT: ("string", None)},
    CLASSIFICATION: {"classes": ("string", "classes"), "scores": ("float32", "classes")},
    EMBEDDING: {"features": ("float32", "features")},
}
METHODS = {
    SERVING_DEFAULT: PREDICT_METHOD,
    SERVING_PIXELS: PREDICT_METHOD,
    CLASSIFICATION: CLASSIFY_METHOD,
    EMBEDDING: PREDICT_METHOD,
}
INPUTS = {
    SERVING_DEFAULT: INPUT_KEY,
    SERVING_PIXELS: PIXELS_INPUT_KEY,
    CLASSIFICATION: CLASSIFY_INPUT_KEY,
    EMBEDDING: INPUT_KEY,
}
