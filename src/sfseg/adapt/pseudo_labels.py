"""Positive learning's pseudo-labels: intra-class thresholds and per-image top-alpha fusion.

You et al., "Domain Adaptive Semantic Segmentation without Source Data", ACM MM 2021, Sec. 3.2.

Notation: ``p(x)`` softmax, ``m(x) = max_c p_c(x)`` confidence, ``y(x) = argmax_c p_c(x)``.

* **Intra-class threshold** ``delta_c``: the value at the top-``alpha`` fraction of the confidences of all
  target pixels predicted as class ``c``. It is computed from a :class:`ConfidenceHistogram`, a streaming
  per-class histogram whose memory (``num_classes x bins`` counters) does not depend on the dataset size.
* **Local selection**: in each image, the pixels whose confidence is in that image's top-``alpha`` fraction.
* **Fusion**: selected = intra-class-selected OR locally-selected; label ``y(x)`` there, 255 elsewhere.

Rank rules (``rank_rule``):

* ``sfseg`` (default). ``k = max(1, ceil(alpha * N_c))`` pixels are kept per class, so when
  ``alpha * N_c < 1`` the single most confident pixel is kept; per image ``k = max(1, ceil(alpha * H * W))``.
  Pixels are ranked by the **score** ``s(x) = -log(1 - m(x))``, computed from the logits so it never
  saturates (after a round of self-training most float32 softmax confidences are exactly 1.0, and a
  quantile of ``m`` is a tie: "the top alpha" would become "almost everything" under ``>=`` or "nothing"
  under ``>``). ``s`` is strictly increasing in ``m``, so on unsaturated data it selects the same pixels
  as thresholding ``m``. Selection uses ``s >= delta``.
* ``released`` (the authors' code). Threshold = the ``int(alpha * N_c)``-th largest confidence (the class
  minimum when that is 0), per image the ``(int(alpha * H * W) - 1)``-th (0-based, descending; the
  minimum when that is -1); float32 softmax confidences compared with ``>``, so a class saturated at 1.0
  loses its intra-class pixels.

A class never predicted has no threshold (``+inf``): it selects nothing, and the round log says so.
The histogram threshold is the lower edge of the bin that holds the exact k-th largest score:
``delta_exact - width < delta_hist <= delta_exact``, so it selects a superset of the exact selection that
differs only by pixels within one bin width of the threshold. Thresholds are logged in confidence units,
``m = 1 - exp(-s)``.

Pseudo-labellers (the registry ``PSEUDO_LABELLERS``) share one protocol, so the labelling pass never
tests a kind string: :meth:`PseudoLabeller.observe` every image (statistics),
:meth:`~PseudoLabeller.reduce` across processes, :meth:`~PseudoLabeller.select` labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch

from sfseg.adapt.config import PseudoLabelConfig
from sfseg.constants import IGNORE_INDEX
from sfseg.models.ops import argmax_classes, count_into, kth_largest
from sfseg.registry import PSEUDO_LABELLERS

MAX_SCORE = 40.0
"""Scores above this (confidence > 1 - 4e-18) share the histogram's last bin."""


def confidence_scores(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The saturation-free confidence score ``s = -log(1 - max_c p_c)`` and the argmax.

    With ``o = sum_{c != y} exp(z_c - z_y)`` (the other classes' mass relative to the winner),
    ``1 - m = o / (1 + o)`` and ``s = log1p(1 / o)``: finite and ordered where the softmax itself rounds
    to 1.0 (``s`` is ``inf`` only when ``o`` underflows, far above :data:`MAX_SCORE`). On the CPU the
    work goes in bands of rows that stay in cache (the same numbers, about twice as fast at 512x1024).

    Shape:
        logits (B, C, H, W) -> score (B, H, W) float32, prediction (B, H, W) int64.
    """
    z = logits.detach()
    b, _, h, w = z.shape
    rows = h if z.is_cuda else max(1, _BAND_ELEMENTS // max(1, z.shape[1] * w))
    if rows >= h:
        return _scores(z)
    score = torch.empty(b, h, w, dtype=torch.float32, device=z.device)
    pred = torch.empty(b, h, w, dtype=torch.int64, device=z.device)
    for i in range(0, h, rows):
        score[:, i : i + rows], pred[:, i : i + rows] = _scores(z[:, :, i : i + rows])
    return score, pred


_BAND_ELEMENTS = 1 << 20  # about 4 MB of float32 logits per band: fits in a CPU cache


def _scores(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.float()
    zmax = z.amax(1, keepdim=True)
    pred = argmax_classes(z, zmax)
    e = (z - zmax).exp_()  # reproducible across processes: see models.ops.warm_up_vector_maths
    e.scatter_(1, pred.unsqueeze(1), 0.0)  # only the winner: a tied runner-up still counts exp(0) = 1
    return torch.log1p(e.sum(1).reciprocal_()), pred


def score_to_confidence(score: torch.Tensor) -> torch.Tensor:
    """Inverse of the score: ``m = 1 - exp(-s)``."""
    return -torch.expm1(-score)


class ConfidenceHistogram:
    """Streaming per-class histogram of confidence scores ``s`` over [0, MAX_SCORE].

    Counters live on ``device`` (the network's), so nothing per pixel crosses to the host.

    Args:
        num_classes: number of classes.
        bins: number of equal-width bins; the threshold error is at most one bin width,
            ``MAX_SCORE / bins`` in score units.
        device: where the counters live.
    """

    def __init__(self, num_classes: int, bins: int = 65536, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.bins = bins
        self.width = MAX_SCORE / bins
        self.counts = torch.zeros(num_classes * bins, dtype=torch.int64, device=device)

    def update(self, score: torch.Tensor, prediction: torch.Tensor) -> None:
        """Add pixels.

        Shape:
            score: any shape, from :func:`confidence_scores`; prediction: same shape, class indices.
        """
        b = (score.detach().reshape(-1) * (1.0 / self.width)).clamp_(0, self.bins - 1).long()
        idx = prediction.reshape(-1).to(b.device) * self.bins + b
        count_into(self.counts, idx.to(self.counts.device))

    @property
    def table(self) -> torch.Tensor:
        """(C, bins) counts."""
        return self.counts.view(self.num_classes, self.bins)

    def thresholds(self, alpha: float | torch.Tensor, rule: str = "sfseg") -> torch.Tensor:
        """(C,) score thresholds for the top-``alpha`` fraction of each class; ``+inf`` if never predicted.

        Args:
            alpha: one fraction for every class, or (C,) one per class.
            rule: ``sfseg`` (keep ``max(1, ceil(alpha N))``) or ``released`` (the ``int(alpha N)``-th
                largest; the class minimum when that is 0).
        """
        alpha = torch.as_tensor(alpha, dtype=torch.float64)
        if not bool(((alpha > 0) & (alpha <= 1)).all()):
            raise ValueError(f"alpha must be in (0, 1], got {alpha.tolist()}")
        table = self.table.cpu()
        n = table.sum(1)
        if rule == "sfseg":
            k = torch.clamp(torch.ceil(alpha * n.double()).long(), min=1)
        elif rule == "released":
            k = torch.floor(alpha * n.double()).long()
            k = torch.where(k == 0, n, k)  # int(alpha N) = 0 -> cls_prob[-0] = the minimum = the N-th largest
        else:
            raise ValueError(f"rule must be 'sfseg' or 'released', got {rule!r}")
        at_or_above = table.flip(1).cumsum(1).flip(1)  # [c, b] = count of pixels in bins >= b
        j = (at_or_above >= k[:, None]).sum(1) - 1
        delta = j.double() * self.width
        return torch.where(n > 0, delta, torch.full_like(delta, math.inf)).float()


def local_top_alpha(score: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per image, the pixels whose score is in that image's top ``max(1, ceil(alpha H W))``, with ``>=``.

    Shape:
        score (B, H, W) -> bool (B, H, W).
    """
    flat = score.reshape(score.shape[0], -1)
    k = max(1, math.ceil(alpha * flat.shape[1]))
    return (flat >= kth_largest(flat, k)).view_as(score)


def local_top_alpha_released(confidence: torch.Tensor, alpha: float) -> torch.Tensor:
    """The released code's per-image rule: ``m > sorted_desc(m)[int(alpha H W) - 1]`` (index -1 = the
    smallest value).

    Shape:
        confidence (B, H, W) float32 softmax maxima -> bool (B, H, W).
    """
    flat = confidence.reshape(confidence.shape[0], -1)
    idx = int(alpha * flat.shape[1]) - 1
    if idx < 0:
        kth = flat.min(1, keepdim=True).values
    else:
        kth = kth_largest(flat, idx + 1)
    return (flat > kth).view_as(confidence)


def class_balanced_labels(
    logits: torch.Tensor,
    thresholds: torch.Tensor,
    alpha: float,
    local: bool = True,
    channel_test: str = "argmax",
    rule: str = "sfseg",
    scores: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Fuse intra-class and per-image selection into pseudo-labels.

    Args:
        logits: network outputs (may be None with ``rule="sfseg"`` and ``channel_test="argmax"``, where
            the selection needs only ``scores``).
        thresholds: (C,) thresholds in the rule's units: scores ``s`` for ``sfseg``
            (:meth:`ConfidenceHistogram.thresholds`), float32 softmax confidences for ``released``
            (:func:`score_to_confidence` of the histogram's, or an exact sort's of the confidences).
        alpha: the round's selection fraction (for the local part).
        local: include the per-image top-alpha pixels.
        channel_test: ``"argmax"`` tests the predicted class's channel against its threshold (default);
            ``"any"`` fires when any channel exceeds its class's threshold (the released code's test).
            The label is the argmax either way.
        rule: ``sfseg`` or ``released`` (see the module docstring).
        scores: ``confidence_scores(logits)`` when already computed.

    Shape:
        logits (B, C, H, W) -> labels (B, H, W) int64, 255 where not selected.
    """
    score, pred = scores if scores is not None else confidence_scores(logits)
    if rule == "sfseg":
        thr = thresholds.to(score.device, score.dtype)
        if channel_test == "argmax":
            selected = score >= thr[pred]
        elif channel_test == "any":
            # Per-channel scores -log(1 - p_c); the argmax channel's from the stable formula.
            p = logits.detach().float().softmax(1)
            per_channel = (-torch.log1p(-p.clamp(max=1 - 1e-7))).scatter(
                1, pred.unsqueeze(1), score.unsqueeze(1)
            )
            selected = (per_channel >= thr.view(1, -1, 1, 1)).any(1)
        else:
            raise ValueError(f"channel_test must be 'argmax' or 'any', got {channel_test!r}")
        if local:
            selected |= local_top_alpha(score, alpha)
    elif rule == "released":
        # float32 confidences and strict '>', as the released code compares softmax outputs.
        thr = thresholds.float().to(score.device)
        p = logits.detach().float().softmax(1)
        conf = p.max(1).values
        if channel_test == "argmax":
            selected = conf > thr[pred]
        elif channel_test == "any":
            selected = (p > thr.view(1, -1, 1, 1)).any(1)
        else:
            raise ValueError(f"channel_test must be 'argmax' or 'any', got {channel_test!r}")
        if local:
            selected |= local_top_alpha_released(conf, alpha)
    else:
        raise ValueError(f"rule must be 'sfseg' or 'released', got {rule!r}")
    return torch.where(selected, pred, torch.full_like(pred, IGNORE_INDEX))


def argmax_labels(logits: torch.Tensor) -> torch.Tensor:
    """Naive self-training: every pixel labelled with its argmax. Shape: (B, C, H, W) -> (B, H, W)."""
    return argmax_classes(logits)


def global_threshold_labels(
    logits: torch.Tensor, threshold: float, scores: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """Confidence self-training: one softmax threshold for all classes (the usual pseudo-label baseline,
    e.g. Lee, "Pseudo-Label", ICML-W 2013). Shape: (B, C, H, W) -> (B, H, W)."""
    score, pred = scores if scores is not None else confidence_scores(logits)
    # m >= t  <=>  s = -log(1 - m) >= -log(1 - t), without forming the softmax.
    t = -math.log1p(-threshold) if threshold < 1 else math.inf
    return torch.where(score >= t, pred, torch.full_like(pred, IGNORE_INDEX))


class PseudoLabeller:
    """A pseudo-label selection rule.

    One labeller serves one round (the method builds it for that round: :meth:`Method.labeller_for
    <sfseg.adapt.method.Method.labeller_for>`). The labelling pass calls :meth:`observe` on every image
    (only when :attr:`needs_statistics`), :meth:`reduce` once with a cross-process sum, and then
    :meth:`select` on every image. Both get the pixels' ``(score, prediction)`` from
    :func:`confidence_scores`, computed once by the pass; :meth:`select` also gets the logits when
    :attr:`needs_logits` (otherwise the pass may keep only the scores between its two passes, which is
    smaller and saves recomputing them).
    """

    name: ClassVar[str] = ""
    needs_statistics: ClassVar[bool] = False
    alpha_capped: bool = False  # the schedule asked for alpha above 1 this round

    def __init__(
        self,
        cfg: PseudoLabelConfig,
        num_classes: int,
        alpha: float | None = None,
        device: torch.device | str = "cpu",
    ):
        """Args:
        cfg: the selection settings.
        num_classes: the class count.
        alpha: this round's selection fraction (default: round 0's, ``cfg.alpha``).
        device: where statistics are kept (the network's device).
        """
        self.cfg, self.num_classes, self.device = cfg, num_classes, torch.device(device)
        self.alpha = cfg.alpha if alpha is None else alpha

    @property
    def needs_logits(self) -> bool:
        """Whether :meth:`select` needs the logits, not only ``(score, prediction)``."""
        return False

    def observe(self, score: torch.Tensor, prediction: torch.Tensor) -> None:
        """Accumulate statistics. Shape: score and prediction (B, H, W)."""

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum the statistics across processes (``all_reduce_sum`` is the identity in one process)."""

    def select(
        self, score: torch.Tensor, prediction: torch.Tensor, logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Labels, 255 = not selected. Shape: score, prediction (B, H, W) [, logits (B, C, H, W)] ->
        (B, H, W) int64."""
        raise NotImplementedError

    def summary(self, class_names: list[str] | tuple[str, ...]) -> dict:
        """What to log about the round's selection rule (thresholds, ...)."""
        return {}


@PSEUDO_LABELLERS.register()
class ArgmaxLabeller(PseudoLabeller):
    """Every pixel, labelled with its argmax (naive self-training)."""

    name = "argmax"

    def select(self, score, prediction, logits=None) -> torch.Tensor:
        return prediction


@PSEUDO_LABELLERS.register()
class GlobalThresholdLabeller(PseudoLabeller):
    """Pixels whose softmax confidence is at least ``threshold``."""

    name = "global_threshold"

    def select(self, score, prediction, logits=None) -> torch.Tensor:
        return global_threshold_labels(logits, self.cfg.threshold, scores=(score, prediction))


@PSEUDO_LABELLERS.register()
class ClassBalancedLabeller(PseudoLabeller):
    """LD's selection: intra-class thresholds over the whole target set, fused with per-image top-alpha."""

    name = "class_balanced"
    needs_statistics = True

    @property
    def needs_logits(self) -> bool:
        return self.cfg.channel_test == "any" or self.cfg.rank_rule == "released"

    def __init__(self, cfg, num_classes, alpha=None, device="cpu"):
        super().__init__(cfg, num_classes, alpha, device)
        self.hist = ConfidenceHistogram(num_classes, cfg.bins, self.device)
        self._thresholds: torch.Tensor | None = None

    def observe(self, score: torch.Tensor, prediction: torch.Tensor) -> None:
        self.hist.update(score, prediction)

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.hist.counts = all_reduce_sum(self.hist.counts)

    @property
    def class_alphas(self) -> torch.Tensor:
        """(C,) each class's selection fraction: ``alpha``, raised to ``class_floor * alpha * N / N_c`` (at
        most 1) so that a class keeps at least ``class_floor * alpha * N`` of the N pixels."""
        n = self.hist.table.sum(1).double().cpu()
        alpha = torch.full_like(n, self.alpha)
        if self.cfg.class_floor > 0:
            need = self.cfg.class_floor * self.alpha * n.sum() / n.clamp(min=1)
            alpha = torch.minimum(torch.maximum(alpha, need), torch.ones_like(alpha))
        return alpha

    @property
    def thresholds(self) -> torch.Tensor:
        if self._thresholds is None:
            self._thresholds = self.hist.thresholds(self.class_alphas, self.cfg.rank_rule)
        return self._thresholds

    def select(self, score, prediction, logits=None) -> torch.Tensor:
        cfg = self.cfg
        thr = self.thresholds
        if cfg.rank_rule == "released":
            thr = score_to_confidence(thr.double()).float()
        return class_balanced_labels(
            logits, thr, self.alpha, cfg.local, cfg.channel_test, cfg.rank_rule, scores=(score, prediction)
        )

    def summary(self, class_names: list[str] | tuple[str, ...]) -> dict:
        thr = self.thresholds
        conf = score_to_confidence(thr.double()).tolist()
        return {
            "thresholds": {
                n: (t if math.isfinite(s) else None) for n, t, s in zip(class_names, conf, thr.tolist())
            }
        }


def build_pseudo_labeller(
    cfg: PseudoLabelConfig, num_classes: int, alpha: float | None = None, device: torch.device | str = "cpu"
) -> PseudoLabeller | None:
    """The labeller of ``cfg.kind`` for one round (``alpha``: that round's fraction, default ``cfg.alpha``);
    None for ``none`` (methods without pseudo-labels)."""
    if cfg.kind == "none":
        return None
    return PSEUDO_LABELLERS.get(cfg.kind, "method.pseudo_labels.kind")(cfg, num_classes, alpha, device)
