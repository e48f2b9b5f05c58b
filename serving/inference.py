"""Predict / Classify / Regress / MultiInference on a loaded version, as TF Serving runs them.

Validation order and error texts follow predict_util.cc, classifier.cc, regressor.cc and
multi_inference.cc. `run(feeds, fetches)` is the model call: direct, or through the batcher.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from serving.errors import failed_precondition, invalid, unimplemented

# TensorFlow's own signature_constants, as TF Serving uses them (not the exporter's names).
DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
PREDICT_METHOD = tf.saved_model.PREDICT_METHOD_NAME
CLASSIFY_METHOD = tf.saved_model.CLASSIFY_METHOD_NAME
REGRESS_METHOD = tf.saved_model.REGRESS_METHOD_NAME

Runner = Callable[[dict[str, np.ndarray], list[str]], list[np.ndarray]]

_NP_TO_DT = {
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.int16): types_pb2.DT_INT16,
    np.dtype(np.int8): types_pb2.DT_INT8,
    np.dtype(np.uint8): types_pb2.DT_UINT8,
    np.dtype(np.uint32): types_pb2.DT_UINT32,
    np.dtype(np.uint64): types_pb2.DT_UINT64,
    np.dtype(np.bool_): types_pb2.DT_BOOL,
}
_DT_TO_NP = {v: k for k, v in _NP_TO_DT.items()}
# TensorProto typed field for each dtype (Tensor::AsProtoField)
_FIELD = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype)


def dtype_of(array: np.ndarray) -> int:
    if array.dtype == object or array.dtype.kind in "SU":
        return types_pb2.DT_STRING
    try:
        return _NP_TO_DT[array.dtype]
    except KeyError:
        raise invalid(f"unsupported tensor dtype {array.dtype}") from None


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """numpy -> TensorProto in typed fields, as TF Serving's Tensor::AsProtoField writes it."""
    array = np.asarray(array)
    dtype = dtype_of(array)
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=int(size))
    flat = array.ravel()
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    else:
        getattr(proto, _FIELD[dtype]).extend(flat.tolist())
    return proto


def from_tensor_proto(proto: tensor_pb2.TensorProto, alias: str) -> np.ndarray:
    try:
        return tf.make_ndarray(proto)
    except Exception as exc:  # noqa: BLE001 - any malformed proto is the client's error
        raise invalid(f"tensor parsing error: {alias} ({exc})") from None


def check_input(alias: str, array: np.ndarray, info) -> None:
    """The dtype of a fed tensor against its TensorInfo, as the C++ session checks a feed (the
    Python session would cast it); the error names the tensor. Shapes are the graph's to check,
    as in TF Serving: a SignatureDef's shape is a declaration, not a contract (half_plus_two
    declares x [-1,1] and takes [3])."""
    got = dtype_of(array) if array.size or array.dtype != np.float64 else info.dtype
    if got != info.dtype:
        raise invalid(
            f"Expects arg[{alias}] ({info.name}) to be {dtype_name(info.dtype)} but "
            f"{dtype_name(got)} is provided"
        )


def find_signature(servable, name: str, missing) -> tuple[str, object]:
    name = name or DEFAULT_SIGNATURE
    if name not in servable.signatures:
        raise missing(name)
    return name, servable.signatures[name]


# ---------------------------------------------------------------- Predict


def predict_arrays(
    servable, signature_name: str, inputs: dict[str, np.ndarray], output_filter, run: Runner
) -> tuple[str, dict[str, np.ndarray]]:
    """Validated feeds -> {alias: array} (PreProcessPrediction + Session::Run)."""
    name, signature = find_signature(
        servable,
        signature_name,
        lambda n: failed_precondition(f'Serving signature key "{n}" not found.'),
    )
    sig_inputs = signature.inputs
    if len(inputs) > len(sig_inputs) or len(inputs) < len(sig_inputs):
        sent, wanted = sorted(inputs), sorted(sig_inputs)
        raise invalid(
            f"input size does not match signature: {len(inputs)}!={len(sig_inputs)} "
            f"len({{{','.join(sent)}}}) != len({{{','.join(wanted)}}}). "
            f"Sent extra: {{{','.join(sorted(set(sent) - set(wanted)))}}}. "
            f"Missing but required: {{{','.join(sorted(set(wanted) - set(sent)))}}}."
        )
    feeds = {}
    for alias, array in inputs.items():
        if alias not in sig_inputs:
            raise invalid(
                f"input tensor alias not found in signature: {alias}. Inputs expected to be "
                f"in the set {{{','.join(sorted(sig_inputs))}}}."
            )
        check_input(alias, array, sig_inputs[alias])
        feeds[sig_inputs[alias].name] = array
    aliases = list(output_filter)
    for alias in aliases:
        if alias not in signature.outputs:
            raise invalid(
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(sorted(signature.outputs))}}}."
            )
    if len(set(aliases)) != len(aliases):
        dup = next(a for a in aliases if aliases.count(a) > 1)
        raise invalid(f"duplicate output tensor alias: {dup}")
    aliases = aliases or sorted(signature.outputs)
    values = run(feeds, [signature.outputs[a].name for a in aliases])
    return name, dict(zip(aliases, values))


def predict(servable, request: predict_pb2.PredictRequest, run: Runner):
    inputs = {k: from_tensor_proto(v, k) for k, v in request.inputs.items()}
    name, outputs = predict_arrays(
        servable, request.model_spec.signature_name, inputs, request.output_filter, run
    )
    response = predict_pb2.PredictResponse()
    fill_model_spec(response.model_spec, servable, name)
    for alias, value in outputs.items():
        response.outputs[alias].CopyFrom(to_tensor_proto(value))
    return response


def fill_model_spec(spec, servable, signature_name: str | None = None) -> None:
    spec.name = servable.name
    spec.version.value = servable.version
    if signature_name is not None:
        spec.signature_name = signature_name


# ---------------------------------------------------------------- Classify / Regress


def serialized_examples(model_input) -> np.ndarray:
    """Input proto -> serialized tf.Examples (context merged in, as TF Serving does)."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        ctx = model_input.example_list_with_context.context.SerializeToString()
        examples = [
            ctx + e.SerializeToString() for e in model_input.example_list_with_context.examples
        ]  # concatenated serializations parse as a merge, example fields winning
    else:
        examples = []
    if not examples:
        raise invalid("Input is empty.")
    return np.array(examples, dtype=object)


def _signature_for(servable, name: str, method: str):
    name, signature = find_signature(
        servable, name, lambda n: invalid(f"No signature was found with the name: {n}")
    )
    kind = "classification" if method == CLASSIFY_METHOD else "regression"
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if kind == "classification" and len(signature.outputs) not in (1, 2):
        raise invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if kind == "regression" and len(signature.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise invalid(f"No {kind} inputs found in SignatureDef: {signature}")
    return name, signature


def classify_result(servable, signature_name: str, model_input, run: Runner):
    name, signature = _signature_for(servable, signature_name, CLASSIFY_METHOD)
    outputs = [k for k in ("classes", "scores") if k in signature.outputs]
    if not outputs:
        raise invalid(
            'Expected classification signature outputs to contain at least one of "classes" '
            f'or "scores". Signature was: {signature}'
        )
    examples = serialized_examples(model_input)
    values = dict(
        zip(
            outputs,
            run(
                {signature.inputs["inputs"].name: examples},
                [signature.outputs[k].name for k in outputs],
            ),
        )
    )
    n = len(examples)
    classes, scores = values.get("classes"), values.get("scores")
    for key, value in values.items():
        if value.ndim != 2:
            raise invalid(
                f"Expected Tensor shape: [batch_size num_classes] but got {list(value.shape)}"
            )
        if value.shape[0] != n:
            raise invalid(f"Expected {key} output batch size of {n}, got {value.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid(
            "Tensors class and score should match in dim_size(1). Got "
            f"{classes.shape[1]} vs. {scores.shape[1]}"
        )
    result = classification_pb2.ClassificationResult()
    width = (classes if classes is not None else scores).shape[1]
    for i in range(n):
        row = result.classifications.add()
        for j in range(width):
            item = row.classes.add()
            if classes is not None:
                label = classes[i, j]
                item.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else label
            if scores is not None:
                item.score = float(scores[i, j])
    return name, result


def classify(servable, request: classification_pb2.ClassificationRequest, run: Runner):
    name, result = classify_result(servable, request.model_spec.signature_name, request.input, run)
    response = classification_pb2.ClassificationResponse(result=result)
    fill_model_spec(response.model_spec, servable, name)
    return response


def regress_result(servable, signature_name: str, model_input, run: Runner):
    name, signature = _signature_for(servable, signature_name, REGRESS_METHOD)
    if "outputs" not in signature.outputs:
        raise invalid(f"No regression outputs found in SignatureDef: {signature}")
    examples = serialized_examples(model_input)
    (values,) = run(
        {signature.inputs["inputs"].name: examples}, [signature.outputs["outputs"].name]
    )
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or values.shape[0] != len(examples):
        raise invalid(f"Expected output Tensor shape to be [batch_size] but got {values.shape}")
    result = regression_pb2.RegressionResult()
    for value in values:
        result.regressions.add(value=float(value))
    return name, result


def regress(servable, request: regression_pb2.RegressionRequest, run: Runner):
    name, result = regress_result(servable, request.model_spec.signature_name, request.input, run)
    response = regression_pb2.RegressionResponse(result=result)
    fill_model_spec(response.model_spec, servable, name)
    return response


def multi_inference(servable, request: inference_pb2.MultiInferenceRequest, run: Runner):
    """multi_inference.cc: every task on the same model, classify or regress, no duplicates."""
    if not request.tasks:
        raise invalid("Found no tasks in MultiInferenceRequest.")
    seen = set()
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid("Found ModelSpec with an empty model name.")
        if task.model_spec.name != request.tasks[0].model_spec.name:
            raise invalid(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        signature = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature in seen:
            raise invalid(f"Duplicate evaluation of signature: {signature}")
        seen.add(signature)
        if signature not in servable.signatures:
            raise invalid(f"Requested signature not found in model graph: {signature}")
        if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise unimplemented(f"Unsupported signature method_name: {task.method_name}")
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            name, value = classify_result(
                servable, task.model_spec.signature_name, request.input, run
            )
            result.classification_result.CopyFrom(value)
        else:
            name, value = regress_result(
                servable, task.model_spec.signature_name, request.input, run
            )
            result.regression_result.CopyFrom(value)
        fill_model_spec(result.model_spec, servable, name)
    return response


def replay_warmup(servable, run: Runner) -> int:
    """Replay assets.extra/tf_serving_warmup_requests through the serving path (as TF Serving's
    saved_model_warmup.cc does before a version takes traffic); returns the records replayed."""
    from serving.loader import read_warmup_records

    count = 0
    for log_record in read_warmup_records(servable.path):
        kind = log_record.WhichOneof("log_type")
        if kind == "predict_log":
            predict(servable, log_record.predict_log.request, run)
        elif kind == "classify_log":
            classify(servable, log_record.classify_log.request, run)
        elif kind == "regress_log":
            regress(servable, log_record.regress_log.request, run)
        elif kind == "multi_inference_log":
            multi_inference(servable, log_record.multi_inference_log.request, run)
        else:
            raise ValueError(f"Unsupported log_type for warmup: {kind}")
        count += 1
    return count
