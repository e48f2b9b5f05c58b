"""Shadow scoring: each batch the pinned version answered is sent again to a second version
(`--shadow-version V` or `--shadow-version-label L`), and its answer is written beside the
primary one in the same row, under `shadow`.

The shadow never costs the primary anything it would not cost alone: its requests go after the
primary's answer, with the same retry policy, and whatever goes wrong with them (a version not
loaded, an image the shadow refuses, no answer within the retry budget) becomes
`shadow: {"error": ...}` in rows that keep the primary's answer.
"""

from __future__ import annotations

import threading
from collections import Counter

from client.config import ScoreConfig
from client.ood import fields
from client.retry import RetryPolicy, RpcError, call_with_retry


class Shadow:
    """The second version's transport, and what it did (`as_dict`, in the run's summary)."""

    def __init__(self, config: ScoreConfig, policy: RetryPolicy, transport=None):
        from client.transport import make_transport

        self.config = config.replace(
            version=config.shadow_version,
            version_label=config.shadow_version_label,
        )
        self.transport = transport or make_transport(self.config)
        self.policy = policy
        self._lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.agreed = 0
        self.compared = 0
        self.versions: Counter = Counter()

    def _predict(self, images: list[bytes], attempt: int):
        with self._lock:
            self.requests += 1
        return self.transport.predict(images, attempt)

    def answers(self, images: list[bytes], stop: threading.Event) -> list[dict]:
        """One `shadow` entry per image: `model_version`, `labels`, `scores` (and `ood_score`,
        `is_ood` when the shadow version has them), or `error`."""
        try:
            prediction = call_with_retry(
                lambda attempt: self._predict(images, attempt), self.policy, stop=stop
            )
        except RpcError as exc:
            return [{"error": f"{exc.code}: {exc.message}"}] * len(images)
        if len(prediction.labels) != len(images):
            error = f"server returned {len(prediction.labels)} rows for {len(images)} images"
            return [{"error": error}] * len(images)
        return [
            {
                "model_version": prediction.model_version,
                "labels": labels,
                "scores": scores,
                **fields(prediction.ood_score, prediction.is_ood, i),
            }
            for i, (labels, scores) in enumerate(zip(prediction.labels, prediction.scores))
        ]

    def attach(self, rows: list[dict], images: list[bytes], stop: threading.Event) -> list[dict]:
        """The shadow's answers put into the primary's rows (rows without an error only)."""
        scored = [i for i, row in enumerate(rows) if "error" not in row]
        if not scored:
            return rows
        answers = self.answers([images[i] for i in scored], stop)
        with self._lock:
            for i, answer in zip(scored, answers):
                rows[i]["shadow"] = answer
                if "error" in answer:
                    self.errors += 1
                    continue
                self.versions[str(answer["model_version"])] += 1
                self.compared += 1
                primary = rows[i]["labels"][:1]
                self.agreed += primary == answer["labels"][:1]
        return rows

    def as_dict(self) -> dict:
        with self._lock:
            agreement = self.agreed / self.compared if self.compared else None
            return {
                "requests": self.requests,
                "errors": self.errors,
                "compared": self.compared,
                "agreement": agreement,
                "model_versions": dict(self.versions),
            }

    def close(self) -> None:
        self.transport.close()
