"""Helpers every caller of a segmentation network shares."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample_logits(
    logits: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = False
) -> torch.Tensor:
    """Bilinear upsampling of logits (never of argmax maps) to ``size`` = (H, W); a no-op when equal.

    ``align_corners=True`` reproduces older DeepLab-v2 code (and the LDBE release); sfseg's default is
    ``False``. At output stride 8 the two differ by a sub-pixel shift.

    Shape:
        logits (B, C, h, w) -> (B, C, H, W).
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)
