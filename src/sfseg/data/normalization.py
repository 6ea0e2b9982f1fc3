"""Input normalisation: channel order, value range, mean and std. It travels with each checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Normalization:
    """How a uint8 RGB image becomes network input.

    ``x = (image[order] * scale - mean) / std``, with ``scale`` = 1/255 for the 0-1 range and 1 for 0-255.

    Args:
        order: ``"RGB"`` or ``"BGR"``.
        value_range: ``1.0`` (0-1 inputs) or ``255.0`` (0-255 inputs).
        mean: per-channel mean, in ``order`` and in the ``value_range`` units.
        std: per-channel std, or ``None`` for no division (Caffe-style).
    """

    order: str = "RGB"
    value_range: float = 1.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] | None = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.order not in ("RGB", "BGR"):
            raise ValueError(f"normalization order must be 'RGB' or 'BGR', got {self.order!r}")
        if self.value_range not in (1.0, 255.0):
            raise ValueError(f"normalization value_range must be 1.0 or 255.0, got {self.value_range!r}")
        if len(self.mean) != 3 or not all(math.isfinite(float(m)) for m in self.mean):
            raise ValueError(f"normalization mean must be 3 finite numbers, got {self.mean!r}")
        if self.std is not None and (
            len(self.std) != 3 or not all(math.isfinite(float(v)) and float(v) > 0 for v in self.std)
        ):
            raise ValueError(
                f"normalization std must be 3 positive finite numbers (a zero std divides by zero), got "
                f"{self.std!r}"
            )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise uint8 images.

        Shape:
            images (B, 3, H, W) or (3, H, W) uint8 RGB -> float32 of the same shape.
        """
        x = images.float()
        if self.order == "BGR":
            x = x.flip(-3)
        x = x * (self.value_range / 255.0)
        view = (3, 1, 1)
        x = x - torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(view)
        if self.std is not None:
            x = x / torch.tensor(self.std, dtype=x.dtype, device=x.device).view(view)
        return x

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        std = d.get("std")
        return cls(d["order"], float(d["value_range"]), tuple(d["mean"]), None if std is None else tuple(std))


IMAGENET = Normalization()
CAFFE_BGR = Normalization("BGR", 255.0, (104.00698793, 116.66876762, 122.67891434), None)
