"""The model contract's choices and defaults, without TensorFlow.

Configs (TrainConfig, the Beam job's) and the command lines' `--help` read these; the modules that
build models (heads.py, preprocessing.py) use the same names, so there is one definition.
"""

from __future__ import annotations

import typing

# Classifier heads (export.model.heads.build_head) and their optimisers.
Head = typing.Literal["softmax", "mlp"]
Optimizer = typing.Literal["adam", "sgd", "rmsprop"]
HEADS: tuple[str, ...] = typing.get_args(Head)
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)

# The preprocessing contract refuses images with more pixels than this, before decoding.
DEFAULT_MAX_PIXELS = 40_000_000
