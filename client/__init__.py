"""Batch scoring against TensorFlow Serving over gRPC (or REST), and evaluation of the output.

`xfer-score` / `python -m client` score image sets; `xfer-evaluate` measures the result.
In Python: `for row in client.score("photos/", target="host:8500", model_name="m"): ...`
This package never imports the model-building code (export/): it runs next to a serving cluster.
"""


def score(inputs, *, target, model_name, **options):
    """Yield one result dict per input (see client.scorer.score); imported lazily (cheap import)."""
    from client.scorer import score as _score

    return _score(inputs, target=target, model_name=model_name, **options)


__all__ = ["score"]
