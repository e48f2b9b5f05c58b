"""REST request bodies -> tensors and Input protos, as TF Serving reads them (util/json_tensor.cc).

The reading half of json_tensor.cc, apart from the writing half (json_response.py) because it is
the half that validates user JSON: every refusal here is TF Serving's own error text.
Predict: `{"signature_name"?, "instances": [...]}` (row format) or `{"inputs": ...}` (columnar);
`{"b64": "..."}` is a DT_STRING value. Classify / regress: `{"examples": [...], "context"?}`,
each example a JSON object of features, read into tf.Examples.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import input_pb2

from serving.errors import invalid
from serving.inference import dtype_name


def data_type_string(dtype: int) -> str:
    """TensorFlow's DataTypeString, as json_tensor.cc words a dtype: DT_FLOAT -> `float`."""
    return dtype_name(dtype)[3:].lower()


# Python's json messages -> RapidJSON's (GetParseError_En), which TF Serving's errors quote.
_RAPIDJSON = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
    "Invalid control character at": "Invalid encoding in string.",
}


def _rapidjson_reason(exc: json.JSONDecodeError) -> str:
    if exc.msg == "Expecting ',' delimiter":  # inside an object or an array?
        opener = _innermost_open(exc.doc[: exc.pos])
        return (
            "Missing a comma or '}' after an object member."
            if opener == "{"
            else "Missing a comma or ']' after an array element."
        )
    return _RAPIDJSON.get(exc.msg, exc.msg)


def _innermost_open(text: str) -> str:
    stack: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped = not escaped and char == "\\"
            in_string = escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def parse_json(body: bytes | str):
    """ParseJson (json_tensor.cc): RapidJSON's error texts; like its kParseStopWhenDoneFlag,
    whatever follows the first JSON value is not read."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError as exc:
        raise invalid(
            f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}"
        ) from None
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise invalid(f"JSON Parse error: The document is empty. at offset: {start}")
    try:
        doc, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise invalid(f"JSON Parse error: {_rapidjson_reason(exc)} at offset: {exc.pos}") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {_debug(doc)} Is not object")
    return doc


def signature_name(doc: dict) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(
            f"JSON Value: {_debug(doc)} not formatted correctly. 'signature_name' key must be a "
            "string value."
        )
    return name


def _debug(value) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 200 else text[:200] + "..."


def _type_name(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _b64(value) -> bytes:
    if not isinstance(value.get("b64"), str):
        raise invalid(f"JSON Value: {_debug(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _leaf(value, dtype: int):
    def wrong():
        return invalid(
            f"JSON Value: {_debug(value)} Type: {_type_name(value)} is not of expected type: "
            f"{data_type_string(dtype)}"
        )

    if dtype == types_pb2.DT_STRING:
        if is_b64(value):
            return _b64(value)
        if isinstance(value, str):
            return value.encode("utf-8")
        raise wrong()
    if dtype == types_pb2.DT_BOOL:
        if isinstance(value, bool):
            return value
        raise wrong()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise wrong()
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        return float(value)
    if not isinstance(value, int):
        raise wrong()
    return value


_NUMPY = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
    types_pb2.DT_BOOL: np.bool_,
}


def _dense_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def to_array(value, dtype: int) -> np.ndarray:
    """A JSON value (nested lists of one dtype) -> ndarray of the signature's dtype."""
    shape = _dense_shape(value)
    flat: list = []

    def walk(item, level):
        if level == len(shape):
            if isinstance(item, list):
                raise invalid(
                    f"Encountered list at unexpected level: {level} expected < {len(shape)}"
                )
            flat.append(_leaf(item, dtype))
            return
        if not isinstance(item, list):
            raise invalid(
                f"JSON Value: {_debug(item)} found at incorrect level: {level + 1} in the JSON "
                f"DOM. Expected at level: {len(shape)}"
            )
        if len(item) != shape[level]:
            raise invalid(
                f"Encountered list at unexpected size: {len(item)} at level: {level} expected "
                f"size: {shape[level]}"
            )
        for child in item:
            walk(child, level + 1)

    walk(value, 0)
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    try:
        return np.array(flat, dtype=_NUMPY.get(dtype, np.float32)).reshape(shape)
    except OverflowError:
        raise invalid(f"JSON Value out of range for {data_type_string(dtype)}") from None


def predict_inputs(doc: dict, input_infos: dict) -> tuple[dict[str, np.ndarray], str]:
    """FillPredictRequestFromJson: -> ({alias: array}, "row" | "columnar")."""
    if not input_infos:
        raise invalid("Failed to get input map for signature: DEFAULT")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid(
            f"JSON Value: {_debug(doc)} Not formatted correctly expecting only one of 'inputs' "
            "or 'instances' keys to exist "
        )
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {_debug(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {_debug(doc)} No values in 'instances' array")
        return _from_instances(instances, input_infos), "row"
    if has_inputs:
        return _from_inputs(doc["inputs"], input_infos), "columnar"
    raise invalid("Missing 'inputs' or 'instances' key")


def _is_named(value) -> bool:
    return isinstance(value, dict) and not is_b64(value)


def _from_instances(instances: list, infos: dict) -> dict[str, np.ndarray]:
    if not _is_named(instances[0]) and len(infos) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    named = _is_named(instances[0])
    rows: dict[str, list[np.ndarray]] = {}
    for i, item in enumerate(instances):
        if named != _is_named(item):
            kind = (
                "Expecting object but got list" if named else "Expecting value/list but got object"
            )
            raise invalid(f"{kind} at item {i} of input list")
        items = item.items() if named else [(next(iter(infos)), item)]
        for name, value in items:
            if name not in infos:
                raise invalid(
                    f"Failed to process element: {i} key: {name} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: JSON object: does not have named input: {name}"
                )
            try:
                array = to_array(value, infos[name].dtype)
            except Exception as exc:
                message = getattr(exc, "message", str(exc))
                where = f"key: {name} " if named else ""
                raise invalid(
                    f"Failed to process element: {i} {where}of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: {message}"
                ) from None
            if rows.get(name) and rows[name][0].shape != array.shape:
                raise invalid(
                    f"Failed to process element: {i} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: Expecting shape {list(rows[name][0].shape)} but got: "
                    f"{list(array.shape)}"
                )
            rows.setdefault(name, []).append(array)
        if named and set(item) != set(infos):
            raise invalid(
                f"Failed to process element: {i} of 'instances' list. JSON object: "
                f"{_debug(item)} keys must be equal to: {','.join(sorted(infos))}"
            )
    return {name: np.stack(parts) for name, parts in rows.items()}


def _from_inputs(value, infos: dict) -> dict[str, np.ndarray]:
    if not _is_named(value):
        if len(infos) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        name = next(iter(infos))
        return {name: to_array(value, infos[name].dtype)}
    arrays = {}
    for name, info in infos.items():
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = to_array(value[name], info.dtype)
    return arrays


# ---------------------------------------------------------------- classify / regress


def _add_feature(feature, name: str, value) -> None:
    kind = feature.WhichOneof("kind")

    def need(wanted: str) -> None:
        if kind not in (None, wanted):
            expected = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}
            raise invalid(
                f"Unexpected element type in feature: {name} expecting type: "
                f"{expected.get(kind, 'UNKNOWN')}"
            )

    if isinstance(value, bool):
        need("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        if not is_b64(value):
            raise invalid(f"Feature: {name} has element with unexpected JSON type: Object")
        need("bytes_list")
        feature.bytes_list.value.append(_b64(value))
    elif isinstance(value, str):
        need("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif isinstance(value, float):
        need("float_list")
        feature.float_list.value.append(value)
    elif isinstance(value, int):
        need("int64_list")
        if value >= 2**63:
            raise invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(value)
    else:
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {_type_name(value)}")


def to_example(value) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {_type_name(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_feature(feature, name, item)
    return example


def classify_input(doc: dict, method: str = "classify") -> input_pb2.Input:
    """FillClassifyRegressRequestFromJson: `examples` (+ optional `context`) -> Input."""
    model_input = input_pb2.Input()
    if "context" in doc:
        model_input.example_list_with_context.context.CopyFrom(to_example(doc["context"]))
    if "examples" not in doc:
        raise invalid(
            f"JSON Value: {_debug(doc)} When method is {method}, key 'examples' is expected and "
            "was not found"
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {_debug(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {_debug(doc)} 'examples' value is an empty array")
    target = (
        model_input.example_list_with_context.examples
        if "context" in doc
        else model_input.example_list.examples
    )
    for item in examples:
        target.add().CopyFrom(to_example(item))
    return model_input
