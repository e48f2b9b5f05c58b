"""Results -> REST response JSON text, printed as TF Serving prints it (util/json_tensor.cc).

The writing half of json_tensor.cc, apart from the reading half (json_request.py): it never sees
user JSON, its only job is TF Serving's output text byte for byte. Predict answers `predictions`
for row requests and `outputs` for columnar ones; one output tensor is written bare, several as
objects keyed by alias. Floats are printed as TF Serving prints them (shortest `%g` that
round-trips, `.0` added to whole numbers); string outputs are plain strings unless their alias
ends in `_bytes` (then `{"b64": ...}`). Classify and regress answer `results`; errors `error`.
"""

from __future__ import annotations

import base64
import json
import math

import numpy as np

from serving.errors import invalid

BYTES_SUFFIX = "_bytes"


def format_float(value: float, single: bool) -> str:
    """WriteDecimal: shortest `%g` that round-trips, else max_digits10; `.0` for integers."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    same = np.float32(float(text)) == np.float32(value) if single else float(text) == value
    if not same:
        text = f"{value:.9g}" if single else f"{value:.17g}"
    if "." not in text and "e" not in text and "n" not in text:
        text += ".0"
    return text


def _scalar(value, as_bytes: bool) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        if as_bytes:
            return '{{"b64": "{}"}}'.format(base64.b64encode(bytes(value)).decode("ascii"))
        return json.dumps(bytes(value).decode("utf-8", "replace"), ensure_ascii=False)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, np.floating):
        return format_float(float(value), value.dtype == np.float32)
    if isinstance(value, float):
        return format_float(value, False)
    return str(int(value))


def _values(array: np.ndarray, as_bytes: bool) -> str:
    array = np.asarray(array)
    if array.ndim == 0:
        return _scalar(array[()], as_bytes)
    return "[" + ", ".join(_values(row, as_bytes) for row in array) + "]"


def predict_response(outputs: dict[str, np.ndarray], form: str) -> str:
    """MakeJsonFromTensors (row -> `predictions`, columnar -> `outputs`)."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    several = len(names) > 1
    if form == "columnar":
        if not several:
            name = names[0]
            return f'{{"outputs": {_values(outputs[name], name.endswith(BYTES_SUFFIX))}}}'
        parts = [f"{json.dumps(n)}: {_values(outputs[n], n.endswith(BYTES_SUFFIX))}" for n in names]
        return '{{"outputs": {{{}}}}}'.format(", ".join(parts))
    batch = None
    for name in names:
        if outputs[name].ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        size = outputs[name].shape[0]
        if batch is not None and size != batch:
            raise invalid(
                f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch}"
            )
        batch = size
    rows = []
    for i in range(batch or 0):
        if several:
            rows.append(
                "{"
                + ", ".join(
                    f"{json.dumps(n)}: {_values(outputs[n][i], n.endswith(BYTES_SUFFIX))}"
                    for n in names
                )
                + "}"
            )
        else:
            rows.append(_values(outputs[names[0]][i], names[0].endswith(BYTES_SUFFIX)))
    return '{{"predictions": [{}]}}'.format(", ".join(rows))


def classify_response(result) -> str:
    if not result.classifications:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for row in result.classifications:
        rows.append(
            "["
            + ", ".join(
                f"[{json.dumps(c.label, ensure_ascii=False)}, {format_float(c.score, True)}]"
                for c in row.classes
            )
            + "]"
        )
    return '{{"results": [{}]}}'.format(", ".join(rows))


def regress_response(result) -> str:
    if not result.regressions:
        raise invalid("Cannot convert empty RegressionResults to JSON")
    values = ", ".join(format_float(r.value, True) for r in result.regressions)
    return f'{{"results": [{values}]}}'


def error_json(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)
