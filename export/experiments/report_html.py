"""The run report's HTML: one self-contained page drawn from `ReportInputs`.

Every image is an inline data: URI and there is no external CSS or JavaScript, so the file can be
mailed, attached to a ticket or archived and still shows everything. Section ids are stable
(SECTIONS) so that links to `report.html#confusion-matrix` keep working.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from export import fsutil, plots
from export.data.dataset import SPLITS, TEST, TRAIN, VALIDATION
from export.experiments.report_data import (
    THUMBNAIL,
    ReportInputs,
    predict,
    read_bytes,
    read_history,
    thumbnail,
)

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
GRID_IMAGES = 20
MISCLASSIFIED_IMAGES = 20
GRADCAM_IMAGES = 6
MAX_LISTED_SKIPPED = 200
SECTIONS = {
    "config": "Configuration",
    "data": "Data",
    "metrics": "Metrics",
    "training-curves": "Training curves",
    "confusion-matrix": "Confusion matrix",
    "tsne": "t-SNE of the bottleneck features",
    "cosine-similarity": "Class similarity",
    "predictions": "Predictions",
    "misclassified": "Misclassified examples",
    "gradcam": "Grad-CAM",
}
_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;
background:#f6f8fa}
header{background:#24292f;color:#fff;padding:16px 32px}
header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#d0d7de;font-size:13px}
nav{padding:8px 32px;background:#fff;border-bottom:1px solid #d0d7de;font-size:14px}
nav a{margin-right:14px;color:#0969da;text-decoration:none}
main{padding:0 32px 32px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:20px 0;padding:8px 20px}
h2{font-size:18px;border-bottom:1px solid #d8dee4;padding-bottom:6px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:left}
th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:8px 0}
img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption,.note{color:#57606a;font-size:13px}
.error{color:#cf222e}
"""


def _e(value) -> str:
    return html.escape(str(value))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(png: bytes, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{_e(alt)}" src="{data_uri(png)}">{cap}</figure>'


def _table(header: list[str] | None, rows: list[list], numeric_from: int = 1) -> str:
    head = ""
    if header is not None:
        head = "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead>"
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            css = ' class="num"' if i >= numeric_from else ""
            cells.append(f"<td{css}>{_e(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _eval_split(inputs: ReportInputs) -> str:
    """Final-model plots are of the test split, or validation when there is no test split."""
    for split in (TEST, VALIDATION, TRAIN):
        if len(inputs.splits[split]):
            return split
    return TEST


# Sections --------------------------------------------------------------------------------------


def _config_section(inputs: ReportInputs) -> str:
    rows = [[key, json.dumps(value)] for key, value in sorted(inputs.config.items())]
    return _table(["setting", "value"], rows, numeric_from=99)


def _data_section(inputs: ReportInputs) -> str:
    splits = inputs.metrics.get("splits", {})
    rows = []
    for label in inputs.labels:
        counts = [splits.get(s, {}).get("per_class_count", {}).get(label, 0) for s in SPLITS]
        rows.append([label, *counts, sum(counts)])
    totals = [sum(r[i + 1] for r in rows) for i in range(len(SPLITS) + 1)]
    rows.append(["all classes", *totals])
    out = [
        f"<p>Source: <code>{_e(inputs.metrics.get('source', ''))}</code></p>",
        _table(["class", *SPLITS, "total"], rows),
    ]
    skipped = inputs.metrics.get("skipped", [])
    count = inputs.metrics.get("skipped_count", len(skipped))
    out.append(f"<h3>Skipped files: {_e(count)}</h3>")
    if skipped:
        shown = [[item.get("path", ""), item.get("reason", "")] for item in skipped]
        out.append(_table(["file", "reason"], shown[:MAX_LISTED_SKIPPED], numeric_from=99))
        if count > MAX_LISTED_SKIPPED:
            out.append(f'<p class="note">… {count - MAX_LISTED_SKIPPED} more not listed</p>')
    return "\n".join(out)


def _fine_tune_html(m: dict) -> str:
    """Head only (before fine-tuning) against the final, fine-tuned classifier, per split."""
    tune = m["fine_tune"] or {}
    before = tune.get("head_only_splits", {})
    after = m.get("splits", {})
    rows = []
    for split in SPLITS:
        b, a = before.get(split, {}), after.get(split, {})
        gain = None
        if b.get("accuracy") is not None and a.get("accuracy") is not None:
            gain = f"{a['accuracy'] - b['accuracy']:+.4f}"
        rows.append(
            [
                split,
                _fmt(b.get("accuracy")),
                _fmt(a.get("accuracy")),
                gain or "n/a",
                _fmt(b.get("loss")),
                _fmt(a.get("loss")),
            ]
        )
    header = ["split", "accuracy head only", "accuracy fine-tuned", "change", "loss head only"]
    facts = [
        ("fine-tuned from layer", tune.get("from")),
        ("layers trained", len(tune.get("trainable_layers", []))),
        ("epochs run", tune.get("epochs_run")),
        ("epoch kept", _kept(tune.get("kept_epoch"))),
        ("learning rate", tune.get("learning_rate")),
        ("training seconds", _fmt(tune.get("train_seconds"), 1)),
    ]
    return "\n".join(
        [
            "<h3>Head only vs fine-tuned</h3>",
            _table([*header, "loss fine-tuned"], rows),
            _table(None, [[k, v] for k, v in facts if v is not None], numeric_from=99),
        ]
    )


def _champion_html(c: dict) -> str:
    """xfer-export's comparison with the version published before (metrics.json `champion`)."""
    head = f"<h3>Against the champion (xfer-export): {_e(c.get('outcome'))}</h3>"
    if c.get("version") is None or "accuracy" not in c:
        return head + f'<p class="note">{_e(c.get("error") or "nothing to compare with")}</p>'
    rows = [["accuracy", *(_fmt(c["accuracy"][k]) for k in ("candidate", "champion"))]]
    rows[0].append(_fmt(c["accuracy"]["change_points"], 2))
    for name, r in c["class_recall"].items():
        rows.append([f"recall {name}", _fmt(r["candidate"]), _fmt(r["champion"])])
        rows[-1].append(_fmt(r["change_points"], 2))
    note = f"version {c['version']} on {c['images']} {c['split']} images; top-1 agreement "
    reasons = "".join(f'<p class="error">{_e(r)}</p>' for r in c.get("regressions", []))
    return "\n".join(
        [head, f'<p class="note">{_e(note + _fmt(c["agreement"]))}</p>', reasons]
        + [_table(["", "candidate", "champion", "change (points)"], rows)]
    )


def _kept(kept: dict | None) -> str | None:
    """metrics.json's kept_epoch as one line: which epoch the model ends with, and why."""
    if not kept:
        return None
    value = "" if kept.get("value") is None else f", {kept['monitor']} {_fmt(kept['value'])}"
    return f"{kept['epoch']} of {kept['of']}{value}: {kept['reason']}"


def _metrics_section(inputs: ReportInputs) -> str:
    m = inputs.metrics
    splits = m.get("splits", {})
    rows = [
        [
            s,
            splits.get(s, {}).get("count", 0),
            _fmt(splits.get(s, {}).get("accuracy")),
            _fmt(splits.get(s, {}).get("loss")),
        ]
        for s in SPLITS
    ]
    out = [_table(["split", "images", "accuracy", "loss"], rows)]
    facts = [
        ("epochs run (head)", m.get("epochs_run")),
        ("epoch kept (head)", _kept(m.get("kept_epoch"))),
        ("training seconds (head)", _fmt(m.get("train_seconds"), 1)),
        ("feature dimension", m.get("feature_dim")),
        ("data hash", m.get("data_hash")),
    ]
    out.append(_table(None, [[k, v] for k, v in facts if v is not None], numeric_from=99))
    if "fine_tune" in m:
        out.append(_fine_tune_html(m))
    if m.get("champion"):
        out.append(_champion_html(m["champion"]))
    return "\n".join(out)


def _curves_section(inputs: ReportInputs) -> str:
    history = read_history(inputs.run_dir)
    if not history:
        return '<p class="note">no history.csv in the run dir</p>'
    out = [_figure(plots.curves_png(history), "training curves", "the head, per epoch")]
    tuned = (inputs.metrics.get("fine_tune") or {}).get("history")
    if tuned:
        out.append(_figure(plots.curves_png(tuned), "fine-tuning curves", "fine-tuning, per epoch"))
    return "\n".join(out)


def _confusion_section(inputs: ReportInputs) -> str:
    split = _eval_split(inputs)
    data = inputs.splits[split]
    predicted = predict(inputs.head, data.features).argmax(axis=1)
    matrix = plots.confusion_matrix(data.label_ids, predicted, len(inputs.labels))
    png = plots.confusion_png(matrix, inputs.labels, f"confusion matrix ({split})")
    return _figure(png, "confusion matrix", f"final model on the {split} split, {len(data)} images")


def _tsne_section(inputs: ReportInputs) -> str:
    parts = [inputs.splits[s] for s in SPLITS if len(inputs.splits[s])]
    x = np.concatenate([p.features for p in parts])
    y = np.concatenate([p.label_ids for p in parts])
    png = plots.tsne_png(x, y, inputs.labels, seed=inputs.seed)
    return _figure(
        png,
        "t-SNE",
        f"all splits, {min(len(y), plots.MAX_TSNE_POINTS)} of {len(y)} images; "
        "well-separated clusters mean the frozen features already tell the classes apart",
    )


def _similarity_section(inputs: ReportInputs) -> str:
    data = inputs.splits[TRAIN]
    matrix = plots.cosine_similarity_matrix(data.features, data.label_ids, len(inputs.labels))
    return _figure(
        plots.cosine_heatmap_png(matrix, inputs.labels),
        "cosine similarity heatmap",
        "cosine similarity of class-mean training features; high off-diagonal values are "
        "classes the backbone sees as alike",
    )


def _predictions(inputs: ReportInputs):
    split = _eval_split(inputs)
    data = inputs.splits[split]
    probs = predict(inputs.head, data.features)
    return split, data, probs.argmax(axis=1), probs.max(axis=1)


def _grid_section(inputs: ReportInputs) -> str:
    split, data, predicted, scores = _predictions(inputs)
    pick = plots.subsample(len(data), GRID_IMAGES, inputs.seed)
    max_pixels = inputs.preprocessor.max_pixels
    png = plots.prediction_grid_png(
        [thumbnail(data.uris[i], max_pixels) for i in pick],
        data.label_ids[pick],
        predicted[pick],
        scores[pick],
        inputs.labels,
    )
    return _figure(
        png, "prediction grid", f"{len(pick)} random {split} images (seed {inputs.seed})"
    )


def _misclassified_section(inputs: ReportInputs) -> str:
    split, data, predicted, scores = _predictions(inputs)
    wrong = np.flatnonzero(predicted != data.label_ids)[:MISCLASSIFIED_IMAGES]
    max_pixels = inputs.preprocessor.max_pixels
    png = plots.misclassified_grid_png(
        [thumbnail(data.uris[i], max_pixels) for i in wrong],
        data.label_ids[wrong],
        predicted[wrong],
        scores[wrong],
        inputs.labels,
        limit=MISCLASSIFIED_IMAGES,
    )
    total = int(np.sum(predicted != data.label_ids))
    caption = f"{total} of {len(data)} {split} images misclassified; {len(wrong)} shown"
    return _figure(png, "misclassified", caption)


def _gradcam_section(inputs: ReportInputs) -> str:
    split = _eval_split(inputs)
    data = inputs.splits[split]
    explainer = inputs.explainer()
    pick = plots.subsample(len(data), GRADCAM_IMAGES, inputs.seed + 1)
    images, titles, colours = [], [], []
    for i in pick:
        try:
            explanation = explainer.explain(read_bytes(data.uris[i]))
        except (OSError, ValueError) as exc:
            log.warning("report: no Grad-CAM for %s: %s", data.uris[i], exc)
            continue
        predicted = explanation.predicted_id
        images.append(explanation.overlay(max_side=THUMBNAIL))
        titles.append(
            f"true: {inputs.labels[data.label_ids[i]]}\n"
            f"pred: {inputs.labels[predicted]} ({explanation.probabilities[predicted]:.2f})"
        )
        colours.append(plots.RIGHT if predicted == data.label_ids[i] else plots.WRONG)
    png = plots.image_grid_png(images, titles, colours, "Grad-CAM of the predicted class", 3)
    return _figure(
        png,
        "Grad-CAM examples",
        f"{len(images)} {split} images; heatmap of layer {explainer.gradcam.layer} "
        "(red: pixels that raised the predicted class's score)",
    )


_BUILDERS = {
    "config": _config_section,
    "data": _data_section,
    "metrics": _metrics_section,
    "training-curves": _curves_section,
    "confusion-matrix": _confusion_section,
    "tsne": _tsne_section,
    "cosine-similarity": _similarity_section,
    "predictions": _grid_section,
    "misclassified": _misclassified_section,
    "gradcam": _gradcam_section,
}


def render(inputs: ReportInputs) -> str:
    """The whole page; a section that fails says why in place, the rest is still drawn."""
    sections = []
    for section_id, title in SECTIONS.items():
        try:
            body = _BUILDERS[section_id](inputs)
        except Exception as exc:  # noqa: BLE001 - one broken plot must not hide the others
            log.exception("report: section %s failed", section_id)
            body = f'<p class="error">could not draw this section: {_e(exc)}</p>'
        sections.append(f'<section id="{section_id}">\n<h2>{_e(title)}</h2>\n{body}\n</section>')
    nav = " ".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS.items())
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    backbone = inputs.config.get("backbone", "?")
    name = inputs.run_dir.resolve().name
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>xfer run {_e(name)}</title><style>{_STYLE}</style></head>\n<body>\n"
        f"<header><h1>xfer training run {_e(name)}</h1>"
        f"<p>{_e(backbone)} backbone, {len(inputs.labels)} classes; report written {when}</p>"
        f"</header>\n<nav>{nav}</nav>\n<main>\n"
        + "\n".join(sections)
        + "\n</main>\n</body></html>\n"
    )


def write_report(inputs: ReportInputs) -> Path:
    path = inputs.run_dir / REPORT_FILE
    fsutil.atomic_write_text(path, render(inputs))
    log.info("report: %s", path)
    return path
