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
* Saturation: after a round of self-training, float32 softmax confidences of most pixels are exactly
  1.0, so a quantile of ``m`` is a tie and "the top alpha" becomes "almost everything" (a threshold at 1.0
  with ``>=`` keeps all of them; with ``>``, as in the reference code, none). We therefore rank pixels by
  the **score** ``s(x) = -log(1 - m(x))``, computed from the logits with a log-sum-exp so it never
  saturates. ``s`` is strictly increasing in ``m``: on unsaturated data it selects exactly the same
  pixels as thresholding ``m``; on saturated data it still keeps the top alpha. Thresholds are logged in
  confidence units, ``m = 1 - exp(-s)``.
* Selection uses ``s >= delta`` (never ``>``).
* The histogram threshold is the lower edge of the bin that holds the exact k-th largest score:
  ``delta_exact - width < delta_hist <= delta_exact``, so it selects a superset of the exact selection
  that differs only by pixels within one bin width of the threshold.
"""

from __future__ import annotations

import math

import torch

from sfseg import IGNORE_INDEX

MAX_SCORE = 40.0
"""Scores above this (confidence > 1 - 4e-18) share the histogram's last bin."""


def confidence_scores(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The saturation-free confidence score ``s = -log(1 - max_c p_c)`` and the argmax.

    ``log(1 - m)`` is the log-sum-exp of the log-probabilities of the *other* classes, which stays
    finite and ordered when the softmax itself rounds to 1.0.

    Shape:
        logits (B, C, H, W) -> score (B, H, W) float, prediction (B, H, W) int64.
    """
    logp = logits.detach().float().log_softmax(1)
    pred = logp.argmax(1)
    others = logp.scatter(1, pred.unsqueeze(1), float("-inf"))
    return -torch.logsumexp(others, 1), pred


def score_to_confidence(score: torch.Tensor) -> torch.Tensor:
    """Inverse of the score: ``m = 1 - exp(-s)``."""
    return -torch.expm1(-score)


class ConfidenceHistogram:
    """Streaming per-class histogram of confidence scores ``s`` over [0, MAX_SCORE].

    Args:
        num_classes: number of classes.
        bins: number of equal-width bins; the threshold error is at most one bin width,
            ``MAX_SCORE / bins`` in score units.
    """

    def __init__(self, num_classes: int, bins: int = 65536):
        self.num_classes = num_classes
        self.bins = bins
        self.width = MAX_SCORE / bins
        self.counts = torch.zeros(num_classes, bins, dtype=torch.int64)

    def update(self, score: torch.Tensor, prediction: torch.Tensor) -> None:
        """Add pixels.

        Shape:
            score: any shape, from :func:`confidence_scores`; prediction: same shape, class indices.
        """
        b = (score.detach().reshape(-1).double() / self.width).floor().long().clamp_(0, self.bins - 1)
        idx = prediction.reshape(-1).long() * self.bins + b.to(prediction.device)
        self.counts += torch.bincount(idx.cpu(), minlength=self.num_classes * self.bins).view(
            self.num_classes, self.bins
        )

    @property
    def class_counts(self) -> torch.Tensor:
        """(C,) number of pixels predicted as each class."""
        return self.counts.sum(1)

    def thresholds(self, alpha: float) -> torch.Tensor:
        """(C,) score thresholds for the top-``alpha`` fraction of each class; ``+inf`` if never predicted."""
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        n = self.class_counts
        k = torch.clamp(torch.ceil(alpha * n.double()).long(), min=1)
        at_or_above = self.counts.flip(1).cumsum(1).flip(1)  # [c, b] = count of pixels in bins >= b
        j = (at_or_above >= k[:, None]).sum(1) - 1
        delta = j.double() * self.width
        return torch.where(n > 0, delta, torch.full_like(delta, math.inf)).float()


def exact_thresholds(
    score: torch.Tensor, prediction: torch.Tensor, num_classes: int, alpha: float
) -> torch.Tensor:
    """Reference implementation by a full sort (memory grows with the data); used by the tests."""
    out = torch.full((num_classes,), math.inf, dtype=torch.float64)
    for c in range(num_classes):
        v = score[prediction == c].double()
        if v.numel():
            k = max(1, math.ceil(alpha * v.numel()))
            out[c] = v.sort(descending=True).values[k - 1]
    return out


def local_top_alpha(score: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per image, the pixels whose score (or confidence) is in that image's top-``alpha`` fraction.

    Shape:
        score (B, H, W) -> bool (B, H, W).
    """
    flat = score.reshape(score.shape[0], -1)
    k = max(1, math.ceil(alpha * flat.shape[1]))
    kth = flat.topk(k, dim=1).values[:, -1:]
    return (flat >= kth).view_as(score)


def class_balanced_labels(
    logits: torch.Tensor,
    thresholds: torch.Tensor,
    alpha: float,
    local: bool = True,
    channel_test: str = "argmax",
) -> torch.Tensor:
    """Fuse intra-class and per-image selection into pseudo-labels.

    Args:
        logits: network outputs.
        thresholds: (C,) score thresholds from :meth:`ConfidenceHistogram.thresholds`.
        alpha: the round's selection fraction (for the local part).
        local: include the per-image top-alpha pixels.
        channel_test: ``"argmax"`` tests the predicted class's channel against its threshold (default);
            ``"any"`` fires when any channel exceeds its class's threshold (the reference code's test).
            The label is the argmax either way.

    Shape:
        logits (B, C, H, W) -> labels (B, H, W) int64, 255 where not selected.
    """
    score, pred = confidence_scores(logits)
    thr = thresholds.to(score.device, score.dtype)
    if channel_test == "argmax":
        selected = score >= thr[pred]
    elif channel_test == "any":
        # Per-channel scores -log(1 - p_c); the argmax channel's from the stable formula.
        p = logits.detach().float().softmax(1)
        per_channel = (-torch.log1p(-p.clamp(max=1 - 1e-7))).scatter(1, pred.unsqueeze(1), score.unsqueeze(1))
        selected = (per_channel >= thr.view(1, -1, 1, 1)).any(1)
    else:
        raise ValueError(f"channel_test must be 'argmax' or 'any', got {channel_test!r}")
    if local:
        selected |= local_top_alpha(score, alpha)
    return torch.where(selected, pred, torch.full_like(pred, IGNORE_INDEX))


def argmax_labels(logits: torch.Tensor) -> torch.Tensor:
    """Naive self-training: every pixel labelled with its argmax. Shape: (B, C, H, W) -> (B, H, W)."""
    return logits.argmax(1)


def global_threshold_labels(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Confidence self-training: one softmax threshold for all classes (the usual pseudo-label baseline,
    e.g. Lee, "Pseudo-Label", ICML-W 2013). Shape: (B, C, H, W) -> (B, H, W)."""
    conf, pred = logits.softmax(1).max(1)
    return torch.where(conf >= threshold, pred, torch.full_like(pred, IGNORE_INDEX))
