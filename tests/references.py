"""Brute-force references the tests compare sfseg's streaming or vectorised code against."""

from __future__ import annotations

import math

import torch


def exact_thresholds(
    score: torch.Tensor, prediction: torch.Tensor, num_classes: int, alpha: float, rule: str = "sfseg"
) -> torch.Tensor:
    """Intra-class thresholds by a full sort (memory grows with the data): the reference for the streaming
    histogram.

    ``score`` may be scores or confidences (the rule only ranks them).
    """
    out = torch.full((num_classes,), math.inf, dtype=torch.float64)
    for c in range(num_classes):
        v = score[prediction == c].double()
        if not v.numel():
            continue
        desc = v.sort(descending=True).values
        if rule == "sfseg":
            k = max(1, math.ceil(alpha * v.numel()))
        else:
            k = int(alpha * v.numel()) or v.numel()
        out[c] = desc[k - 1]
    return out
