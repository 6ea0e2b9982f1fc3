"""Helpers every caller of a segmentation network shares."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample_logits(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear upsampling of logits (never of argmax maps) to ``size`` = (H, W); a no-op when equal.

    Shape:
        logits (B, C, h, w) -> (B, C, H, W).
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
