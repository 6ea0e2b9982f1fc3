"""Selected ClassMix: paste half of the classes of one image onto the next.

Olsson et al., "ClassMix: Segmentation-Based Data Augmentation for Semi-Supervised Learning", WACV 2021;
used with class-balanced pseudo-labels by LDBE's boundary-enhancement stage.

For image ``i`` of a batch, ``floor(n_i / 2)`` of the ``n_i`` classes present in its label map (255 is not a
class) are drawn at random; their pixels, with their labels and confidences, are pasted onto image
``(i + 1) mod B``. Every per-pixel tensor is mixed with the same masks, so images, labels and confidences
stay consistent.
"""

from __future__ import annotations

import torch

from sfseg.constants import IGNORE_INDEX
from sfseg.registry import MIXINGS

"""Mixings by name (``method.mixing``): ``fn(labels, generator, *tensors) -> mixed tensors``, where
``labels`` (B, H, W) chooses what is pasted and every per-pixel tensor is mixed the same way."""


def class_mix_masks(
    labels: torch.Tensor, generator: torch.Generator | None = None, rare_power: float = 0.0
) -> torch.Tensor:
    """Per image, the pixels of a random half of its classes: drawn uniformly, or (``rare_power`` > 0)
    without replacement with weights ``(pixels of the class in the image) ** -rare_power``, so that the
    small classes are pasted (and learnt in new contexts) more often.

    Shape:
        labels (B, H, W) int64 -> masks (B, H, W) bool.
    """
    masks = torch.zeros_like(labels, dtype=torch.bool)
    for i, lab in enumerate(labels):
        present, counts = lab.unique(return_counts=True)
        keep = present != IGNORE_INDEX
        present, counts = present[keep], counts[keep]
        k = present.numel() // 2
        if not k:
            continue
        if rare_power > 0:
            weights = counts.double().cpu().pow(-rare_power)
            order = torch.multinomial(weights, present.numel(), replacement=False, generator=generator)
        else:
            order = torch.randperm(present.numel(), generator=generator)
        masks[i] = torch.isin(lab, present[order[:k].to(present.device)])
    return masks


def class_mix(masks: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Mix each tensor: image ``i``'s masked pixels over image ``i + 1`` (cyclic).

    Args:
        masks: (B, H, W) from :func:`class_mix_masks`.
        tensors: (B, H, W) or (B, C, H, W) per-pixel tensors, all mixed with the same masks.

    Returns:
        the mixed tensors; mixed image ``j`` takes its pasted pixels from image ``j - 1``.
    """
    src_masks = masks.roll(1, dims=0)  # the mask that lands on image j comes from image j - 1
    out = []
    for t in tensors:
        src = t.roll(1, dims=0)
        m = src_masks if t.dim() == 3 else src_masks.unsqueeze(1)
        out.append(torch.where(m, src, t))
    return out


@MIXINGS.register("classmix")
def classmix(
    labels: torch.Tensor, generator: torch.Generator | None, *tensors: torch.Tensor
) -> list[torch.Tensor]:
    """Selected ClassMix of ``tensors`` (images and per-pixel maps), the classes chosen from ``labels``."""
    return class_mix(class_mix_masks(labels, generator), *tensors)


@MIXINGS.register("classmix_rare")
def classmix_rare(
    labels: torch.Tensor, generator: torch.Generator | None, *tensors: torch.Tensor
) -> list[torch.Tensor]:
    """ClassMix whose pasted classes favour each image's small ones (weights ``pixels ** -0.5``)."""
    return class_mix(class_mix_masks(labels, generator, rare_power=0.5), *tensors)
