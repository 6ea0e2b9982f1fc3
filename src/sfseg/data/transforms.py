"""Joint image/label transforms of the reference recipe (DeepLab-v2 self-training on Cityscapes).

Images are resized bicubically (antialiased when shrinking), labels by nearest neighbour, so a label never
holds a value that was not in it. All randomness comes from the ``numpy.random.Generator`` passed in, so a
sample's crop depends only on (seed, round, epoch, index) — the same with or without loader workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from sfseg.config import MAX_SIDE, in_range, require


@dataclass
class AugmentConfig:
    """Training-time augmentation of images and their per-pixel targets (labels or pseudo-labels;
    horizontal flips are separate).

    Attributes:
        kind: ``none`` (images as they are), ``scale_crop`` (the adaptation reference recipe: resize the
            short side to ``short_side * s``, s drawn from ``scales``; random ``crop`` x ``crop`` crop, or,
            when the image is smaller, a random square crop of its short side resized to ``crop``) or
            ``resize_crop`` (source training: resize every image to ``size``, then a random ``window``).
        short_side: scale_crop: the short side before scaling (reference: 720).
        scales: scale_crop: the scale factors (reference: 0.5, 0.75, 1.0, 1.25, 1.5).
        crop: scale_crop: the square crop's side (reference: 600).
        size: resize_crop: ``[width, height]`` every image is resized to first (empty: kept).
        window: resize_crop: ``[width, height]`` of the random window (empty: the whole image); a smaller
            image is padded (targets with 255).
    """

    kind: Literal["none", "scale_crop", "resize_crop"] = "none"
    short_side: int = 720
    scales: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5])
    crop: int = 600
    size: list[int] = field(default_factory=list)
    window: list[int] = field(default_factory=list)

    def check(self) -> None:
        in_range(self.short_side, 1, MAX_SIDE, "short_side")
        in_range(self.crop, 1, MAX_SIDE, "crop")
        require(
            bool(self.scales) and len(self.scales) <= 64 and 0 < min(self.scales) and max(self.scales) <= 8,
            "scales",
            f"must be 1 to 64 factors in (0, 8], got {self.scales}",
        )
        for key in ("size", "window"):
            v = getattr(self, key)
            require(
                not v or (len(v) == 2 and min(v) > 0 and max(v) <= MAX_SIDE),
                key,
                f"must be [width, height] with sizes in 1..{MAX_SIDE}, or empty, got {v}",
            )


def resize_crop(
    image: torch.Tensor, target: torch.Tensor | None, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``resize_crop``: resize to ``cfg.size`` (targets by nearest neighbour), then a random
    ``cfg.window``.

    Shape:
        image (3, H0, W0) uint8, target (H0, W0) or None -> (3, H, W), (H, W).
    """
    if cfg.size:
        image = resize_image(image, tuple(cfg.size))
        target = None if target is None else resize_label(target, tuple(cfg.size))
    if cfg.window:
        image, target = random_crop(image, target, tuple(cfg.window), rng)
    return image, target


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of uint8 images to ``size`` = (W, H).

    Shape:
        (3, H0, W0) or (B, 3, H0, W0) uint8 -> same rank, (H, W) spatial, uint8.
    """
    w, h = size
    if tuple(image.shape[-2:]) == (h, w):
        return image
    x = image.float().unsqueeze(0) if image.dim() == 3 else image.float()
    shrink = h < x.shape[-2] or w < x.shape[-1]
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=shrink)
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x[0] if image.dim() == 3 else x


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a label map (H0, W0) to ``size`` = (W, H)."""
    w, h = size
    if tuple(label.shape[-2:]) == (h, w):
        return label
    return F.interpolate(label[None, None].float(), size=(h, w), mode="nearest")[0, 0].to(label.dtype)


def scale_crop_params(height: int, width: int, cfg: AugmentConfig, rng: np.random.Generator) -> tuple:
    """Draw the reference recipe's random rescale and square crop for an image of ``height`` x ``width``.

    Returns:
        ``(new_w, new_h, y0, x0, side)``: resize to (new_w, new_h), crop ``side`` x ``side`` at (y0, x0),
        then (when ``side < cfg.crop``) resize the crop to ``cfg.crop``.
    """
    s = float(rng.choice(cfg.scales))
    short = max(1, round(cfg.short_side * s))
    h, w = height, width
    nw, nh = (short, max(1, round(h * short / w))) if w < h else (max(1, round(w * short / h)), short)
    side = min(cfg.crop, nh, nw)
    y0 = int(rng.integers(0, nh - side + 1))
    x0 = int(rng.integers(0, nw - side + 1))
    return nw, nh, y0, x0, side


def apply_scale_crop(
    image: torch.Tensor, label: torch.Tensor | None, params: tuple, crop: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply :func:`scale_crop_params`' draw, on whatever device ``image`` is (the CPU on the loader
    workers, or the GPU).

    Shape:
        image (3, H, W) uint8, label (H, W) or None -> (3, crop, crop), (crop, crop).
    """
    nw, nh, y0, x0, side = (int(v) for v in params)
    image = resize_image(image, (nw, nh))
    label = None if label is None else resize_label(label, (nw, nh))
    image = image[:, y0 : y0 + side, x0 : x0 + side]
    label = None if label is None else label[y0 : y0 + side, x0 : x0 + side]
    if side < crop:
        image = resize_image(image, (crop, crop))
        label = None if label is None else resize_label(label, (crop, crop))
    return image, label


def scale_crop(
    image: torch.Tensor, label: torch.Tensor | None, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference recipe's random rescale and square crop (see :class:`AugmentConfig`).

    Shape:
        image (3, H, W) uint8, label (H, W) or None -> (3, crop, crop), (crop, crop).
    """
    params = scale_crop_params(image.shape[-2], image.shape[-1], cfg, rng)
    return apply_scale_crop(image, label, params, cfg.crop)


def random_crop(
    image: torch.Tensor, label: torch.Tensor | None, size: tuple[int, int], rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A random ``size`` = (W, H) window; an image smaller than that is padded (label with 255) first.

    Shape:
        image (3, H0, W0) uint8, label (H0, W0) or None -> (3, H, W), (H, W).
    """
    w, h = size
    _, h0, w0 = image.shape
    if h0 < h or w0 < w:
        ph, pw = max(0, h - h0), max(0, w - w0)
        image = F.pad(image, (0, pw, 0, ph), value=0)
        label = None if label is None else F.pad(label, (0, pw, 0, ph), value=255)
        h0, w0 = image.shape[-2:]
    y0 = int(rng.integers(0, h0 - h + 1))
    x0 = int(rng.integers(0, w0 - w + 1))
    image = image[:, y0 : y0 + h, x0 : x0 + w]
    return image, None if label is None else label[y0 : y0 + h, x0 : x0 + w]
