"""Settings shared by the test modules (importable, unlike conftest.py)."""

TINY = {"backbone": "tiny", "weights": "none"}
FAST_TRAINING = {"epochs": 60, "patience": 0, "learning_rate": 0.01, "progress": False}
MODEL = "shapes"  # export_config.model_name: the model every serving-side test serves
