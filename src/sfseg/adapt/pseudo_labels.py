"""Positive learning's pseudo-labels: intra-class thresholds and per-image top-alpha fusion.

You et al., "Domain Adaptive Semantic Segmentation without Source Data", ACM MM 2021, Sec. 3.2.

Notation: ``p(x)`` softmax, ``m(x) = max_c p_c(x)`` confidence, ``y(x) = argmax_c p_c(x)``.

* **Intra-class threshold** ``delta_c``: the value at the top-``alpha`` fraction of the confidences of all
  target pixels predicted as class ``c``. It is computed from a :class:`ConfidenceHistogram`, a streaming
  per-class histogram whose memory (``num_classes x bins`` counters) does not depend on the dataset size.
* **Local selection**: in each image, the pixels whose confidence is in that image's top-``alpha`` fraction.
* **Fusion**: selected = intra-class-selected OR locally-selected; label ``y(x)`` there, 255 elsewhere.

Edge cases (documented choices):

* ``k = max(1, ceil(alpha * N_c))`` pixels are kept per class: when ``alpha * N_c < 1`` the single most
  confident pixel is kept (the reference code instead selected *every* pixel of such a class).
* A class never predicted has no threshold (``+inf``): it selects nothing, and the round log says so.
* Selection uses ``m >= delta`` (never ``>``), so confidences saturated at exactly 1.0 stay selectable.
* The histogram threshold is the lower edge of the bin that holds the exact k-th largest confidence:
  ``delta_exact - 1/bins < delta_hist <= delta_exact``, so it selects a superset of the exact selection
  that differs only by pixels within one bin width of the threshold.
"""

from __future__ import annotations

import math

import torch

from sfseg import IGNORE_INDEX


class ConfidenceHistogram:
    """Streaming per-class histogram of max-softmax confidences over [0, 1].

    Args:
        num_classes: number of classes.
        bins: number of equal-width bins; the threshold error is at most ``1 / bins``.
    """

    def __init__(self, num_classes: int, bins: int = 16384):
        self.num_classes = num_classes
        self.bins = bins
        self.counts = torch.zeros(num_classes, bins, dtype=torch.int64)

    def update(self, confidence: torch.Tensor, prediction: torch.Tensor) -> None:
        """Add pixels.

        Shape:
            confidence: any shape, values in [0, 1]; prediction: same shape, class indices.
        """
        b = (confidence.detach().reshape(-1).float() * self.bins).long().clamp_(0, self.bins - 1)
        idx = prediction.reshape(-1).long() * self.bins + b.to(prediction.device)
        self.counts += torch.bincount(idx.cpu(), minlength=self.num_classes * self.bins).view(
            self.num_classes, self.bins)

    @property
    def class_counts(self) -> torch.Tensor:
        """(C,) number of pixels predicted as each class."""
        return self.counts.sum(1)

    def thresholds(self, alpha: float) -> torch.Tensor:
        """(C,) intra-class thresholds for the top-``alpha`` fraction; ``+inf`` for never-predicted classes."""
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        n = self.class_counts
        k = torch.clamp(torch.ceil(alpha * n.double()).long(), min=1)
        at_or_above = self.counts.flip(1).cumsum(1).flip(1)  # [c, b] = count of pixels in bins >= b
        j = (at_or_above >= k[:, None]).sum(1) - 1
        delta = j.double() / self.bins
        return torch.where(n > 0, delta, torch.full_like(delta, math.inf)).float()


def exact_thresholds(confidence: torch.Tensor, prediction: torch.Tensor, num_classes: int,
                     alpha: float) -> torch.Tensor:
    """Reference implementation by a full sort (memory grows with the data); used by the tests."""
    out = torch.full((num_classes,), math.inf)
    for c in range(num_classes):
        v = confidence[prediction == c]
        if v.numel():
            k = max(1, math.ceil(alpha * v.numel()))
            out[c] = v.sort(descending=True).values[k - 1]
    return out


def local_top_alpha(confidence: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per image, the pixels whose confidence is in that image's top-``alpha`` fraction.

    Shape:
        confidence (B, H, W) -> bool (B, H, W).
    """
    flat = confidence.reshape(confidence.shape[0], -1)
    k = max(1, math.ceil(alpha * flat.shape[1]))
    kth = flat.topk(k, dim=1).values[:, -1:]
    return (flat >= kth).view_as(confidence)


def class_balanced_labels(probs: torch.Tensor, thresholds: torch.Tensor, alpha: float, local: bool = True,
                          channel_test: str = "argmax") -> torch.Tensor:
    """Fuse intra-class and per-image selection into pseudo-labels.

    Args:
        probs: softmax probabilities.
        thresholds: (C,) from :meth:`ConfidenceHistogram.thresholds`.
        alpha: the round's selection fraction (for the local part).
        local: include the per-image top-alpha pixels.
        channel_test: ``"argmax"`` tests the predicted class's channel against its threshold (default);
            ``"any"`` fires when any channel exceeds its class's threshold (the reference code's test).
            The label is the argmax either way.

    Shape:
        probs (B, C, H, W) -> labels (B, H, W) int64, 255 where not selected.
    """
    conf, pred = probs.max(1)
    thr = thresholds.to(probs.device, probs.dtype)
    if channel_test == "argmax":
        selected = conf >= thr[pred]
    elif channel_test == "any":
        selected = (probs >= thr.view(1, -1, 1, 1)).any(1)
    else:
        raise ValueError(f"channel_test must be 'argmax' or 'any', got {channel_test!r}")
    if local:
        selected |= local_top_alpha(conf, alpha)
    return torch.where(selected, pred, torch.full_like(pred, IGNORE_INDEX))


def argmax_labels(probs: torch.Tensor) -> torch.Tensor:
    """Naive self-training: every pixel labelled with its argmax. Shape: (B, C, H, W) -> (B, H, W)."""
    return probs.argmax(1)


def global_threshold_labels(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Confidence self-training: one threshold for all classes. Shape: (B, C, H, W) -> (B, H, W)."""
    conf, pred = probs.max(1)
    return torch.where(conf >= threshold, pred, torch.full_like(pred, IGNORE_INDEX))
