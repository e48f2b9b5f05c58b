"""`--preprocess client`: each image decoded and resized here, sent as the model's uint8 pixels.

The pixels must be the ones the server would have made from the bytes, or the scores differ. So
this module calls the preprocessing contract's own pixel step, `export.model.pixels`: the one
place where client/ imports from export/ (a documented exception, docs/architecture.md; a copy
would drift from the model's graph). The import is lazy, so `--preprocess server` (the default)
still runs with the client alone.

What the pixel step needs comes from the server, never from a flag: the input size S from the
`serving_pixels` signature's input shape (GetModelMetadata), and the contract's version, resize
mode (none named: squash) and pixel limit from that signature's `preprocessing` output, read by
one probe request at start and checked again in every response (a version swapped in during the
run with another contract stops the run rather than scoring wrong pixels).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace

from client.batching import fits_alone, request_bytes
from client.config import PIXELS_INPUT_KEY, PREPROCESSING_OUTPUT, SERVING_PIXELS, ScoreConfig

log = logging.getLogger(__name__)


class PixelsUnavailable(ValueError):
    """The run cannot send pixels to this model (the message says why and what to do)."""


@dataclass(frozen=True)
class ModelMetadata:
    """What GetModelMetadata says, protocol-neutral: signature -> input alias -> (dtype name,
    shape with -1 for an unknown dimension)."""

    version: int | None
    signatures: dict[str, dict[str, tuple[str, list[int]]]]
    outputs: dict[str, list[str]] | None = None  # signature -> output aliases, when known


def input_size(metadata: ModelMetadata, model: str) -> int:
    """S of `serving_pixels`' uint8 [-1, S, S, 3] input; PixelsUnavailable without one."""
    where = f"model {model!r}" + (f" version {metadata.version}" if metadata.version else "")
    inputs = metadata.signatures.get(SERVING_PIXELS)
    if inputs is None:
        raise PixelsUnavailable(
            f"{where} has no {SERVING_PIXELS} signature (it has {sorted(metadata.signatures)}): "
            "exported before preprocessing version 3; re-export or use --preprocess server"
        )
    dtype, shape = inputs.get(PIXELS_INPUT_KEY, ("", []))
    if dtype != "DT_UINT8" or len(shape) != 4 or shape[1] != shape[2] or shape[1] < 1:
        raise PixelsUnavailable(
            f"{where}: {SERVING_PIXELS} takes {sorted(inputs)} ({dtype} {shape}), not "
            f"{PIXELS_INPUT_KEY} uint8 [-1, S, S, 3]; use --preprocess server"
        )
    return shape[1]


@dataclass(frozen=True)
class PixelContract:
    """The model's `preprocessing` output: the contract version and its parameters."""

    version: str
    image_size: int
    max_pixels: int
    text: str  # as the model wrote it: every response must say the same
    fields: dict  # all of it, the resize mode's fields included

    @classmethod
    def parse(cls, text: str) -> PixelContract:
        try:
            fields = json.loads(text)
            return cls(str(fields["version"]), int(fields["image_size"]),
                       int(fields["max_pixels"]), text, fields)  # fmt: skip
        except (ValueError, KeyError, TypeError):
            raise PixelsUnavailable(
                f"{SERVING_PIXELS}'s {PREPROCESSING_OUTPUT} output is {text!r}, not the JSON of "
                "version, image_size and max_pixels; use --preprocess server"
            ) from None


def load_contract_step():
    """(EagerPixels, contract_resize) of the installed contract, imported here only."""
    try:
        from export.model.pixels import EagerPixels, contract_resize
    except ImportError as exc:
        raise PixelsUnavailable(
            f"--preprocess client needs the model's preprocessing contract, the export package "
            f"of xfer ({exc}); install xfer whole, or use --preprocess server"
        ) from None
    return EagerPixels, contract_resize


class ClientPixels:
    """The contract's pixel step for one model: items' encoded bytes -> their uint8 pixels."""

    def __init__(self, contract: PixelContract, size: int):
        eager_pixels, contract_resize = load_contract_step()
        try:
            resize = contract_resize(contract.fields)
        except ValueError as exc:
            raise PixelsUnavailable(
                f"the model's preprocessing is version {contract.version}, this client's "
                f"contract cannot make its pixels ({exc}): install the xfer that exported the "
                "model, or use --preprocess server"
            ) from None
        if contract.image_size != size:
            raise PixelsUnavailable(
                f"{SERVING_PIXELS} takes {size}x{size} pixels but its {PREPROCESSING_OUTPUT} "
                f"says image_size {contract.image_size}; use --preprocess server"
            )
        self.contract = contract
        self.size = size
        self.resize = resize
        self.image_bytes = 3 * size * size
        self._step = eager_pixels(size, contract.max_pixels, resize)

    def prepare(self, items: list) -> tuple[list, list[tuple[object, str]]]:
        """(items whose data are now their pixels, in order; (item, reason) for each image the
        contract refuses, worded as the server words it: `INVALID_ARGUMENT: <reason>`)."""
        ready, refused = [], []
        for item in items:
            pixels, reason = self._step(item.data)
            if reason is not None:
                refused.append((item, f"INVALID_ARGUMENT: {reason}"))
            else:
                ready.append(replace(item, data=pixels.tobytes()))
        return ready, refused

    def check(self, answered: list[str] | None) -> str | None:
        """None when every response row names this run's contract, else what it named."""
        for text in answered or [None]:
            if text != self.contract.text:
                return text
        return None

    def describe(self) -> str:
        c = self.contract
        return (
            f"client-side preprocessing: contract version {c.version}, {self.size}x{self.size} "
            f"uint8 pixels ({self.image_bytes} bytes an image), resize {self.resize}, "
            f"max_pixels {c.max_pixels}"
        )


def discover(transport, config: ScoreConfig, call) -> ClientPixels:
    """The model's pixel step, from the server: S from GetModelMetadata, the contract from a probe
    of one black image. `call(request)` runs `request(attempt)` with the run's retries."""
    metadata = call(transport.metadata)
    size = input_size(metadata, config.model_name)
    image_bytes = 3 * size * size
    if not fits_alone(image_bytes, config.max_message_bytes):
        raise PixelsUnavailable(
            f"one {size}x{size} image is {image_bytes} bytes of pixels: a request with it would be "
            f"{request_bytes([image_bytes])} bytes, over the limit of {config.max_message_bytes} "
            f"(--max-message-mb {config.max_message_mb}); raise it, or use --preprocess server"
        )
    probe = call(lambda attempt: transport.predict([bytes(image_bytes)], attempt, size))
    if not probe.preprocessing:
        raise PixelsUnavailable(
            f"{SERVING_PIXELS} returned no {PREPROCESSING_OUTPUT} output; use --preprocess server"
        )
    return ClientPixels(PixelContract.parse(probe.preprocessing[0]), size)
