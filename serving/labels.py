"""Version labels as ServerCore assigns them on a config (re)load (server_core.cc
UpdateModelVersionLabelMap): a label must name a version that is available; with
--allow_version_labels_for_unavailable_models a new label may name one that is not (yet), but an
existing label is never moved to one. No TensorFlow, no state: the manager keeps the result.
"""

from __future__ import annotations


def assign_labels(
    model: str,
    wanted: dict[str, int],
    current: dict[str, int],
    available: set[int],
    allow_unavailable: bool,
) -> tuple[dict[str, int], list[str]]:
    """-> (the labels now in force, the refusals in TF Serving's words). A refused label keeps
    the version it had, if any."""
    labels: dict[str, int] = {}
    refused: list[str] = []
    for label, version in wanted.items():
        unchanged = current.get(label) == version
        new_label = label not in current
        if version in available or unchanged or (allow_unavailable and new_label):
            labels[label] = version
            continue
        refused.append(
            f"Request to assign label to version {version} of model {model}, which is not "
            "currently available for inference"
        )
        if label in current:
            labels[label] = current[label]
    return labels, refused
