"""Upstream's expected metadata JSON files, rebuilt from their content:
testdata/half_plus_two_model_metadata.json and saved_model_half_plus_two_2_versions_metadata.json
(the REST metadata of `default` and of `saved_model_half_plus_two_2_versions`, version 123)."""

from __future__ import annotations

_BATCH_OF_ONE = {
    "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
    "unknown_rank": False,
}
_UNKNOWN_RANK = {"dim": [], "unknown_rank": True}


def _tensor(dtype: str, name: str, shape: dict) -> dict:
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def _signature(inputs: dict, outputs: dict, method: str) -> dict:
    return {"inputs": inputs, "outputs": outputs, "method_name": method, "defaults": {}}


_EXAMPLES = {"inputs": _tensor("DT_STRING", "tf_example:0", _UNKNOWN_RANK)}
_X2 = {"inputs": _tensor("DT_FLOAT", "x2:0", _BATCH_OF_ONE)}


def _float_out(alias: str, name: str) -> dict:
    return {alias: _tensor("DT_FLOAT", name, _BATCH_OF_ONE)}


REGRESS, CLASSIFY = "tensorflow/serving/regress", "tensorflow/serving/classify"
SIGNATURES = {
    "regress_x2_to_y3": _signature(_X2, _float_out("outputs", "y3:0"), REGRESS),
    "serving_default": _signature(
        {"x": _tensor("DT_FLOAT", "x:0", _BATCH_OF_ONE)},
        _float_out("y", "y:0"),
        "tensorflow/serving/predict",
    ),
    "classify_x_to_y": _signature(_EXAMPLES, _float_out("scores", "y:0"), CLASSIFY),
    "regress_x_to_y2": _signature(_EXAMPLES, _float_out("outputs", "y2:0"), REGRESS),
    "regress_x_to_y": _signature(_EXAMPLES, _float_out("outputs", "y:0"), REGRESS),
}


def _metadata(name: str, signatures: dict) -> dict:
    return {
        "model_spec": {"name": name, "signature_name": "", "version": "123"},
        "metadata": {"signature_def": {"signature_def": signatures}},
    }


HALF_PLUS_TWO_MODEL_METADATA = _metadata("default", SIGNATURES)
HALF_PLUS_TWO_2_VERSIONS_METADATA = _metadata(
    "saved_model_half_plus_two_2_versions",
    {**SIGNATURES, "classify_x2_to_y3": _signature(_X2, _float_out("scores", "y3:0"), CLASSIFY)},
)
