"""The preprocessing contract's resize mode: how an image of any shape becomes S x S. No TensorFlow.

* `squash`: the whole image, bilinear (antialiased) to S x S, aspect ratio not kept. Preprocessing
  version 3's only behaviour; an artefact that names no mode is squash.
* `center_crop`: the ImageNet evaluation crop the pretrained networks were measured with. The image
  is scaled, aspect ratio kept, so that its shorter side is S + crop_padding, and the central
  S x S is kept: the crop covers the central S / (S + crop_padding) of the shorter side (224/256 at
  the defaults). The scale and the offset are one resampling of the decoded image
  (export/model/resize.py): no cropped copy is made, and the memory is squash's. Interpolation
  `bicubic` (Keys, a = -0.5, as Pillow's) or `bilinear`, both antialiased.

The contract's version names what a reader must know to make the same pixels: squash is version 3
exactly, and is recorded as "3", so that everything that reads version 3 (an older client or
trainer) still reads it; center_crop is version "4", which an older xfer refuses by the version
check it already has instead of squashing.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

ResizeName = typing.Literal["squash", "center_crop"]
Interpolation = typing.Literal["bicubic", "bilinear"]
SQUASH, CENTER_CROP = typing.get_args(ResizeName)
INTERPOLATIONS: tuple[str, ...] = typing.get_args(Interpolation)
DEFAULT_CROP_PADDING = 32
DEFAULT_INTERPOLATION = "bicubic"
# The mode a transfer-learning run gets when --resize is not given (docs/preprocessing.md,
# "Resize modes", has the measurement it was chosen from); the pretrained ImageNet classifier
# (xfer-classify, xfer-export --imagenet-head) gets the crop it was evaluated with.
TRANSFER_DEFAULT = SQUASH
IMAGENET_DEFAULT = CENTER_CROP

SQUASH_VERSION = "3"
CROP_VERSION = "4"


@dataclass(frozen=True)
class ResizeMode:
    """One of the two modes and, for center_crop, its parameters (ignored by squash, so two squash
    modes are always equal)."""

    mode: ResizeName = SQUASH
    crop_padding: int = DEFAULT_CROP_PADDING
    interpolation: Interpolation = DEFAULT_INTERPOLATION

    def __post_init__(self):
        if self.mode not in (SQUASH, CENTER_CROP):
            raise ValueError(
                f"resize must be {SQUASH!r} or {CENTER_CROP!r}; received {self.mode!r}"
            )
        if self.mode == SQUASH:
            object.__setattr__(self, "crop_padding", DEFAULT_CROP_PADDING)
            object.__setattr__(self, "interpolation", DEFAULT_INTERPOLATION)
            return
        if not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ValueError(
                f"crop_padding must be an integer >= 0; received {self.crop_padding!r}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"crop interpolation must be one of {', '.join(INTERPOLATIONS)}; "
                f"received {self.interpolation!r}"
            )

    @property
    def is_crop(self) -> bool:
        return self.mode == CENTER_CROP

    @property
    def version(self) -> str:
        """The preprocessing version that describes this mode's pixels."""
        return CROP_VERSION if self.is_crop else SQUASH_VERSION

    @classmethod
    def of(cls, flags, default: str = TRANSFER_DEFAULT) -> ResizeMode:
        """From a stage's flat config (`resize`, `crop_padding`, `crop_interpolation`): `resize`
        None is `default`; a config without the field (a run recorded before it) is squash."""
        name = getattr(flags, "resize", SQUASH)
        return cls(
            name or default,
            getattr(flags, "crop_padding", DEFAULT_CROP_PADDING),
            getattr(flags, "crop_interpolation", DEFAULT_INTERPOLATION),
        )

    def flags(self) -> dict:
        """The flat config's fields for this mode (the inverse of `of`)."""
        return {
            "resize": self.mode,
            "crop_padding": self.crop_padding,
            "crop_interpolation": self.interpolation,
        }

    def to_dict(self) -> dict:
        if not self.is_crop:
            return {"mode": self.mode}
        return {"mode": self.mode, "crop_padding": self.crop_padding,
                "interpolation": self.interpolation}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict | str | None) -> ResizeMode:
        """From `to_dict`'s form; None (an artefact written before the field) is squash."""
        if data is None:
            return cls()
        if isinstance(data, str):
            return cls(data)
        return cls(
            data.get("mode", SQUASH),
            data.get("crop_padding", DEFAULT_CROP_PADDING),
            data.get("interpolation", DEFAULT_INTERPOLATION),
        )

    def contract_fields(self) -> dict:
        """What serving_pixels' `preprocessing` output adds for this mode: nothing for squash (a
        squash model's output is version 3's, to the byte)."""
        if not self.is_crop:
            return {}
        return {"resize": self.mode, "crop_padding": self.crop_padding,
                "interpolation": self.interpolation}  # fmt: skip

    @classmethod
    def from_contract(cls, fields: dict) -> ResizeMode:
        """From the `preprocessing` output's JSON fields (no `resize`: squash)."""
        return cls(
            fields.get("resize", SQUASH),
            fields.get("crop_padding", DEFAULT_CROP_PADDING),
            fields.get("interpolation", DEFAULT_INTERPOLATION),
        )

    def describe(self) -> str:
        if not self.is_crop:
            return "bilinear, antialias, aspect ratio not kept"
        return (
            f"center crop: scaled (aspect ratio kept) so that the shorter side is image_size + "
            f"{self.crop_padding}, the central image_size x image_size kept; {self.interpolation}, "
            "antialias"
        )

    def __str__(self) -> str:
        if not self.is_crop:
            return self.mode
        return f"{self.mode} (padding {self.crop_padding}, {self.interpolation})"
