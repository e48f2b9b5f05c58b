"""The gate's serving_pixels checks: the images' pixels made as a client makes them (the contract's
own pixel step, in the contract's resize mode), and the `preprocessing` output the model serves.

Run in the gate's child process (export/publishing/gate.py), TF1-style like the rest of it.
"""

from __future__ import annotations

import json

import numpy as np

from export.contract import PIXELS_INPUT_KEY, PREPROCESSING_OUTPUT, SERVING_PIXELS


def client_pixels(signature, images: list[bytes], contract: dict) -> np.ndarray:
    """The images as a client sends them to serving_pixels: the contract's pixel step, at the
    size the signature's input declares, in the contract's resize mode."""
    import tensorflow as tf

    from export.model.pixels import contract_resize, image_pixels

    size = signature.inputs[PIXELS_INPUT_KEY].tensor_shape.dim[1].size
    resize = contract_resize(contract)
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
        contents = tf.compat.v1.placeholder(tf.string, [])
        pixels = image_pixels(contents, size, contract["max_pixels"], resize)
        return np.stack([sess.run(pixels, {contents: image}) for image in images])


def served_contract(sess, signature) -> dict:
    """serving_pixels' own `preprocessing` output, from one black image (a client's probe)."""
    pixels = signature.inputs[PIXELS_INPUT_KEY]
    black = np.zeros([1, *(d.size for d in pixels.tensor_shape.dim[1:])], np.uint8)
    [text] = sess.run(signature.outputs[PREPROCESSING_OUTPUT].name, {pixels.name: black})
    return json.loads(text)


def check_contract(signature, values: dict, expected: dict, problems: list[str]) -> None:
    """serving_pixels' `preprocessing` output is the expected contract, one whose pixels a client
    makes (export.model.pixels.contract_resize) at the input size."""
    from export.model.pixels import contract_resize

    size = signature.inputs[PIXELS_INPUT_KEY].tensor_shape.dim[1].size
    for text in {str(v, "utf-8") if isinstance(v, bytes) else str(v) for v in values}:
        try:
            contract = json.loads(text)
            contract_resize(contract)
            ok = contract == expected and contract["image_size"] == size
            ok = ok and isinstance(contract["max_pixels"], int)
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            problems.append(
                f"{SERVING_PIXELS}/{PREPROCESSING_OUTPUT}: {text!r}, expected "
                f"{json.dumps(expected, separators=(',', ':'))!r} at image_size {size}"
            )
