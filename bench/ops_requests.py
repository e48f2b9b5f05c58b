"""What bench/ops_drill.py sends: Predict requests, and a corpus of bad requests over gRPC and REST.

The corpus is what broken or hostile clients send a model server: bytes that are no image, images
that are too large or built to make a decoder allocate, tensors and routes the model does not
have, JSON that is not TF Serving's, a body over the REST limit. Each entry is sent as is and its
answer kept as a status (a gRPC code name, or `HTTP <status>`) and the message's first line. One
entry is a good image on purpose: a 36-megapixel PNG of one colour (47 KB), under the pixel
limit, which the server must decode; it is there for the server's memory, not its refusal.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import struct
import urllib.parse
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from memory_bench import gif_frame_bomb  # bench/ is on sys.path (ops_drill.py, the test)
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

INPUT = "image_bytes"  # the exported signatures' input (export/contract.py)
SIGNATURE = "serving_default"
MAX_MESSAGE = 256 << 20  # the client side of gRPC: the corpus sends 16 MB and 1000-image batches
REST_OVER_LIMIT = (64 << 20) + 1024  # over xfer-serve's default --rest_api_max_body_bytes


@dataclass(frozen=True)
class Target:
    """A running server and the base path it polls (the drills publish versions into it)."""

    grpc: str  # host:port
    rest: str  # http://host:port
    model: str
    base: Path
    pid: int  # the server's process, for its memory


@dataclass(frozen=True)
class Case:
    name: str
    protocol: str  # grpc | rest
    send: Callable[[], tuple[str, str]]  # -> (status, first line of the message)
    expect: str = "refused"  # or "answered" (a good image, there for memory), or "either"


def channel(target: Target) -> grpc.Channel:
    """A channel of its own: a local subchannel pool, so each one is its own TCP connection."""
    options = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
    ]
    return grpc.insecure_channel(target.grpc, options=options)


def strings(values: list[bytes], shape: list[int] | None = None) -> tensor_pb2.TensorProto:
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape or [len(values)]]
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims),
        string_val=values,
    )


def predict_request(
    model: str,
    images: list[bytes],
    *,
    input_name: str = INPUT,
    signature: str = SIGNATURE,
    version: int | None = None,
    label: str = "",
    tensor: tensor_pb2.TensorProto | None = None,
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    request.inputs[input_name].CopyFrom(tensor if tensor is not None else strings(images))
    return request


def floats(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, np.float32)
    return np.asarray(tensor.float_val, np.float32)


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def grpc_call(method, request) -> tuple[str, str]:
    try:
        method(request, timeout=120)
    except grpc.RpcError as exc:
        return exc.code().name, first_line(exc.details() or "")
    return "OK", ""


def rest_post(target: Target, path: str, body: bytes) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(target.rest)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def rest_call(target: Target, path: str, body: bytes) -> tuple[str, str]:
    try:
        status, data = rest_post(target, path, body)
    except OSError as exc:  # a reset or a broken pipe is an answer too: recorded as such
        return type(exc).__name__, str(exc)
    try:
        message = str(json.loads(data).get("error", "")) if status != 200 else ""
    except (ValueError, AttributeError):
        message = data[:200].decode("utf-8", "replace")
    return f"HTTP {status}", first_line(message)


def flat_png(width: int, height: int) -> bytes:
    """A greyscale PNG of one colour, compressed row by row (tens of KB for tens of megapixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    packer = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * width  # filter type 0, then the pixels
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def jpeg_of(image: bytes) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(image)).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def payloads(image: bytes) -> dict[str, bytes]:
    """The corpus's image-like bytes, sent over both protocols."""
    jpeg = jpeg_of(image)
    return {
        "empty bytes": b"",
        "truncated JPEG (first half)": jpeg[: len(jpeg) // 2],
        "a text file": b"id,label\n1,cat\n2,dog\n" * 40,
        "PNG 8000x6000 (48 MP, over the limit), 56 KB": flat_png(8000, 6000),
        "GIF frame bomb: 16x16 screen, 12000x12000 frame, 107 KB": gif_frame_bomb(12000, 12000),
    }


HUGE_UNDER_LIMIT = "PNG 6000x6000 (36 MP, under the limit), 47 KB: decoded"


def corpus(target: Target, image: bytes, stub, big_batch: int) -> list[Case]:
    """Every case, gRPC first. `image` is a good one; `big_batch` copies of it make the batch."""
    m = target.model
    bad = payloads(image)
    huge = flat_png(6000, 6000)
    cases: list[Case] = []

    def g(name: str, request, method=None, expect: str = "refused") -> None:
        call = method or stub.Predict
        cases.append(Case(name, "grpc", lambda: grpc_call(call, request), expect))

    for name, data in bad.items():
        g(name, predict_request(m, [data]))
    g(HUGE_UNDER_LIMIT, predict_request(m, [huge]), expect="answered")
    g("16 MB of noise", predict_request(m, [os.urandom(16 << 20)]))
    g("wrong input name (pixels)", predict_request(m, [image], input_name="pixels"))
    wrong_dtype = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": 2}]),
        float_val=[0.5, 1.5],
    )
    g("wrong dtype (DT_FLOAT)", predict_request(m, [], tensor=wrong_dtype))
    g("wrong rank ([1,1] strings)", predict_request(m, [], tensor=strings([image], [1, 1])))
    g("wrong signature name", predict_request(m, [image], signature="nope"))
    g("unknown model", predict_request("no-such-model", [image]))
    g("unknown version (999)", predict_request(m, [image], version=999))
    g("unknown version label", predict_request(m, [image], label="no-such-label"))
    # Refused over a batching server's max_batch_size, run without batching (as TF Serving).
    g(f"a batch of {big_batch} images", predict_request(m, [image] * big_batch), expect="either")
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = m, "classification"
    classify.input.example_list.examples.add().features.feature["other"].int64_list.value.append(1)
    g("Classify: an Example without image/encoded", classify, stub.Classify)

    def r(name: str, body: bytes | str, path: str = "", expect: str = "refused") -> None:
        data = body.encode() if isinstance(body, str) else body
        route = path or f"/v1/models/{m}:predict"
        cases.append(Case(name, "rest", lambda: rest_call(target, route, data), expect))

    def b64(data: bytes) -> str:
        return json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]})

    for name, data in bad.items():
        r(name, b64(data))
    r(HUGE_UNDER_LIMIT, b64(huge), expect="answered")
    good = b64(image)
    r("malformed JSON", '{"instances": [')
    r("JSON not an object", "[1, 2, 3]")
    r("no 'instances' or 'inputs' key", '{"images": []}')
    r("wrong JSON type: instances a number", '{"instances": 5}')
    r("wrong JSON type: b64 a number", '{"instances": [{"b64": 5}]}')
    r("base64 garbage", '{"instances": [{"b64": "***not base64***"}]}')
    r("wrong input name (pixels)", json.dumps({"inputs": {"pixels": [{"b64": "AAAA"}]}}))
    r("wrong dtype (numbers)", '{"instances": [0.5, 1.5]}')
    r("wrong signature name", good[:-1] + ', "signature_name": "nope"}')
    r("unknown model", good, "/v1/models/no-such-model:predict")
    r("unknown version (999)", good, f"/v1/models/{m}/versions/999:predict")
    r("unknown version label", good, f"/v1/models/{m}/labels/no-such-label:predict")
    r("unknown verb", good, f"/v1/models/{m}:frobnicate")
    many = {"instances": [{"b64": base64.b64encode(image).decode()}] * big_batch}
    r(f"a batch of {big_batch} images", json.dumps(many), expect="either")
    r("body over the 64 MiB limit", b" " * REST_OVER_LIMIT)
    return cases


def scores(target: Target, stub, image: bytes) -> dict[str, list[float]]:
    """A good image's scores over gRPC and REST (for comparing before and after the corpus)."""
    response = stub.Predict(predict_request(target.model, [image]), timeout=60)
    body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()
    status, data = rest_post(target, f"/v1/models/{target.model}:predict", body)
    if status != 200:
        raise RuntimeError(f"a good image over REST: HTTP {status}: {data[:200]!r}")
    rest = json.loads(data)["predictions"][0]["scores"]
    return {"grpc": floats(response.outputs["scores"]).tolist(), "rest": rest}


def memory_mb(pid: int) -> dict[str, float]:
    """The process's resident set now and at its peak (VmRSS, VmHWM), in MiB."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": found["VmRSS"], "hwm_mb": found["VmHWM"]}


def run_corpus(cases: list[Case]) -> list[dict]:
    answers = []
    for case in cases:
        status, message = case.send()
        answers.append(
            {
                "case": case.name,
                "protocol": case.protocol,
                "expect": case.expect,
                "status": status,
                "message": message,
            }
        )
    return answers


def as_expected(answer: dict) -> bool:
    """Refused with a message, answered, or either, as the case expects."""
    answered = answer["status"] in ("OK", "HTTP 200")
    if answer["expect"] == "refused":
        return not answered and bool(answer["message"])
    return answered or answer["expect"] == "either"


def bad_requests(target: Target, image: bytes, repeats: int, big_batch: int) -> dict:
    """The corpus once (answers kept), then `repeats` times more; the server's memory before,
    after the first pass and after each further one; a good image's scores before and after."""
    from tqdm import tqdm

    with channel(target) as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        before_scores = scores(target, stub, image)
        cases = corpus(target, image, stub, big_batch)
        memory = [memory_mb(target.pid)]
        answers = run_corpus(cases)
        memory.append(memory_mb(target.pid))
        changed = 0
        for _ in tqdm(range(repeats), desc="bad-request corpus, again", unit="pass"):
            again = run_corpus(cases)
            changed += sum(a["status"] != b["status"] for a, b in zip(answers, again))
            memory.append(memory_mb(target.pid))
        after_scores = scores(target, stub, image)
    same = all(np.allclose(before_scores[p], after_scores[p], atol=1e-6) for p in ("grpc", "rest"))
    return {
        "cases": answers,
        "passes": 1 + repeats,
        "answers_that_changed_between_passes": changed,
        "memory_before": memory[0],
        "memory_after_1_pass": memory[1],
        f"memory_after_{1 + repeats}_passes": memory[-1],
        "rss_mb_after_each_pass": [m["rss_mb"] for m in memory[1:]],
        "good_image_same_scores_after": bool(same),
        "good_image_top_score": max(after_scores["grpc"]),
    }
