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


def argmax_classes(logits: torch.Tensor, zmax: torch.Tensor | None = None) -> torch.Tensor:
    """``logits.argmax(1)`` (the first class on ties), computed from ``amax``: on CPUs PyTorch's
    ``argmax``/``max(dim)`` over the channel dimension of NCHW is 5-20x slower than ``amax``.

    Shape:
        logits (B, C, H, W) -> (B, H, W) int64; ``zmax`` (B, 1, H, W) if already computed.
    """
    if logits.is_cuda:
        return logits.argmax(1)
    c = logits.shape[1]
    if zmax is None:
        zmax = logits.amax(1, keepdim=True)
    if c > 255:
        return logits.argmax(1)
    # Weight each channel that reaches the maximum by C - c: the largest weight is the first such channel.
    weights = torch.arange(c, 0, -1, dtype=torch.uint8, device=logits.device).view(1, c, 1, 1)
    return c - ((logits == zmax).to(torch.uint8) * weights).amax(1).long()
