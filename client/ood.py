"""The OOD outputs (`ood_score`, `is_ood`) of a model that has them, for the scored rows.

A model exported with an OOD detector returns both from serving_default and serving_pixels
(docs/architecture.md, "Exported model"); older models have neither, and asking them for an
output they lack is INVALID_ARGUMENT, so a gRPC client asks only after GetModelMetadata lists
them. REST returns every output: the rows say it.
"""

from __future__ import annotations

import logging

from client.config import OOD_OUTPUTS
from client.retry import RpcError

log = logging.getLogger(__name__)


class OodOutputs:
    """Whether each signature has the OOD outputs, learnt once per run from `metadata`."""

    def __init__(self, metadata):
        self._metadata = metadata  # (attempt) -> client.pixels.ModelMetadata
        self._known: dict[str, bool] = {}

    def wanted(self, signature: str, attempt: int) -> tuple[str, ...]:
        """The output names to add to a request's filter: both, or none (also when the
        metadata cannot be read: the rows then go without them)."""
        if signature not in self._known:
            try:
                outputs = (self._metadata(attempt).outputs or {}).get(signature, [])
            except RpcError as exc:
                log.debug("no model metadata (%s): rows without ood_score", exc)
                outputs = []
            self._known[signature] = all(o in outputs for o in OOD_OUTPUTS)
        return OOD_OUTPUTS if self._known[signature] else ()


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
