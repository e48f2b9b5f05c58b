"""The OOD outputs (`ood_score`, `is_ood`) of a model that has them, for the scored rows.

A model exported with an OOD detector returns both from serving_default and serving_pixels
(docs/architecture.md, "Exported model"); older models have neither, and asking them for an
output they lack is INVALID_ARGUMENT, so a gRPC client asks only after GetModelMetadata lists
them. REST returns every output: the rows say it.

Which version answers can change during a run (a label moved, a newer version published), so
what the metadata said is kept with the version it described, and read again when an answer
shows another version: the server refusing the outputs asked for (the new version lacks them),
or an answer from another version than the metadata's without them (the new version may have
them). The request is then sent again with the outputs the answering version has.
"""

from __future__ import annotations

import logging
import threading

from client.config import OOD_OUTPUTS
from client.retry import RETRYABLE, RpcError

log = logging.getLogger(__name__)
SENDS = 3  # a request and two re-sends: a label moved twice while one batch was answered


def refused_outputs(exc: RpcError) -> bool:
    """The server's INVALID_ARGUMENT for an output filter naming an OOD output the signature
    lacks (TF Serving: `output tensor alias not found in signature: ood_score ...`)."""
    return (
        exc.code == "INVALID_ARGUMENT"
        and "alias not found" in exc.message
        and any(o in exc.message for o in OOD_OUTPUTS)
    )


class OodOutputs:
    """Whether each signature has the OOD outputs, and for which version the metadata said so.

    `metadata(target)` reads GetModelMetadata from `target`, the server the request goes to
    (with several --target's, the version that answers is that server's)."""

    def __init__(self, metadata):
        self._metadata = metadata  # (target) -> client.pixels.ModelMetadata
        self._known: dict[str, tuple[int | None, bool]] = {}  # signature -> (version, has them)
        self._lock = threading.Lock()

    def _read(self, signature: str, target) -> tuple[int | None, bool] | None:
        """(version, has them); None when the server could not answer now (not remembered:
        the next request asks again)."""
        try:
            metadata = self._metadata(target)
        except RpcError as exc:
            log.debug("no model metadata (%s): rows without ood_score", exc)
            return None if exc.code in RETRYABLE else (None, False)
        outputs = (metadata.outputs or {}).get(signature, [])
        return metadata.version, all(o in outputs for o in OOD_OUTPUTS)

    def wanted(self, signature: str, target, fresh: bool = False) -> tuple[str, ...]:
        """The output names to add to a request's filter: both, or none (also when the
        metadata cannot be read: the rows then go without them). `fresh`: read it again.
        The read happens outside the lock: a slow server must not hold up every batch."""
        with self._lock:
            known = None if fresh else self._known.get(signature)
        if known is None:
            known = self._read(signature, target)
            if known is None:
                return ()
            with self._lock:
                self._known[signature] = known
        return OOD_OUTPUTS if known[1] else ()

    def moved(self, signature: str, version: int | None, asked: tuple[str, ...]) -> bool:
        """An answer without the OOD outputs from another version than the metadata described
        (or than none, when the metadata could not be read): that version may have them."""
        with self._lock:
            known = self._known.get(signature)
        if asked or version is None:
            return False
        if known is None:
            return True  # the last read failed for now: ask again
        return known[0] is not None and known[0] != version

    def send(self, signature: str, target, request):
        """`request(outputs)` -> (response, its model version), with the OOD outputs of the
        version that answers: sent again when that version turns out to have others."""
        asked = self.wanted(signature, target)
        sent = 0
        while True:
            sent += 1
            try:
                response, version = request(asked)
            except RpcError as exc:
                if sent == SENDS or not (asked and refused_outputs(exc)):
                    raise
                log.info("%s: %s; reading the model's metadata again", signature, exc.message)
                asked = self.wanted(signature, target, fresh=True)
                continue
            if sent == SENDS or not self.moved(signature, version, asked):
                return response
            asked = self.wanted(signature, target, fresh=True)
            if not asked:
                return response  # the version that answered has none either


def from_columns(columns, convert=list) -> tuple[list[float] | None, list[bool] | None]:
    """(ood_score, is_ood) lists from output name -> per-image values (`convert`ed: a gRPC
    response's TensorProtos); (None, None) for a response without them."""
    if not all(o in columns for o in OOD_OUTPUTS):
        return None, None
    score, flag = (convert(columns[o]) for o in OOD_OUTPUTS)
    return [float(s) for s in score], [bool(b) for b in flag]


def fields(ood_score: list[float] | None, is_ood: list[bool] | None, i: int) -> dict:
    """Image i's `ood_score` and `is_ood` for its row; nothing for a model without them."""
    if ood_score is None or is_ood is None:
        return {}
    return {OOD_OUTPUTS[0]: ood_score[i], OOD_OUTPUTS[1]: is_ood[i]}
