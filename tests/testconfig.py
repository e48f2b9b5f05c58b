"""Settings shared by the test modules (importable, unlike conftest.py)."""

TINY = {"backbone": "tiny", "weights": "none"}
# No report.html: it costs seconds per run; the session's `trained` run writes one (test_report).
FAST_TRAINING = {
    "epochs": 60,
    "patience": 0,
    "learning_rate": 0.01,
    "progress": False,
    "report": False,
}
MODEL = "shapes"  # export_config.model_name: the model every serving-side test serves


def bottleneck_args(images, output, *extra: str) -> list[str]:
    """xfer-bottlenecks flags for the test backbone."""
    base = ["--input", str(images), "--output", str(output)]
    return [*base, "--backbone", TINY["backbone"], "--weights", TINY["weights"], *extra]
