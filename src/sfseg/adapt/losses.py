"""The loss functions of LD and its baselines, each a plain function of tensors.

* Positive learning: cross-entropy on selected pseudo-labels (You et al., ACM MM 2021, Sec. 3.2).
* Negative learning with heuristic complementary labels (Sec. 3.3; after NLNL, Kim et al., ICCV 2019):
  pick a class of **medium** rank ``k ~ U{floor(C/2) - w, ..., floor(C/2) + w}`` and minimise
  ``-log(1 - p_k)``.
* The entropy-style term: entropy on unselected pixels (as a secondary summary of the paper reports it),
  or the released code's
  ``-sum_c p_c * log_softmax(p)_c`` (a log-softmax of probabilities, not an entropy).
* Baselines: entropy minimisation on all pixels; maximum squares (Chen et al., ICCV 2019); SHOT's
  diversity term (Liang et al., ICML 2020), which with entropy makes information maximisation (SHOT-IM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sfseg.constants import IGNORE_INDEX

NEG_CLAMP = 1e-5
_EPS = 1e-8


def positive_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over selected pixels (label != 255); zero (with a graph) if none is selected.

    Shape:
        logits (B, C, H, W), labels (B, H, W) -> scalar.
    """
    if not (labels != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def sample_rank(num_classes: int, width: int, generator: torch.Generator | None = None) -> int:
    """Draw the complementary rank ``k ~ U{floor(C/2) - w, ..., floor(C/2) + w}``, **1-based**.

    ``k`` counts from 1: the complementary class of a pixel is its k-th most probable class, as the
    released code's ``topk(p, k, sorted=True).indices[:, -1]``. For C = 19, w = 3: k in {6, ..., 12},
    i.e. 0-based ranks 5..11; for C = 16: k in {5, ..., 11}. The range is clipped to ``[2, C]`` so that the
    top class is never pushed down.
    """
    ranks = complementary_ranks(num_classes, width)
    return int(torch.randint(ranks[0], ranks[-1] + 1, (1,), generator=generator).item())


def complementary_ranks(num_classes: int, width: int) -> list[int]:
    """The 1-based ranks :func:`sample_rank` draws from, each equally likely:
    ``floor(C/2) - w .. floor(C/2) + w`` clipped to ``[2, C]``."""
    return list(range(max(2, num_classes // 2 - width), min(num_classes, num_classes // 2 + width) + 1))


def complementary_labels(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Each pixel's k-th most probable class (``k`` 1-based, as :func:`sample_rank` draws it). Detached.

    Shape:
        probs (B, C, H, W) -> (B, H, W) int64.
    """
    return probs.detach().topk(k, dim=1, sorted=True).indices[:, -1]


def negative_loss(probs: torch.Tensor, complementary: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of ``-log(clamp(1 - p_k(x), min=1e-5))`` for complementary labels ``k``.

    Shape:
        probs (B, C, H, W), complementary (B, H, W) -> scalar.
    """
    p_k = probs.gather(1, complementary.unsqueeze(1)).squeeze(1)
    return -torch.log(torch.clamp(1 - p_k, min=NEG_CLAMP)).mean()


def entropy_map(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy per pixel. Shape: (B, C, H, W) -> (B, H, W)."""
    return -(probs * torch.log(probs.clamp(min=_EPS))).sum(1)


def entropy_unselected(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Entropy averaged over pixels *not* selected as pseudo-labels (label == 255); from a secondary
    summary of the paper (not in the released code; docs/method-notes.md).

    Shape:
        probs (B, C, H, W), labels (B, H, W) -> scalar (zero, with a graph, if every pixel is selected).
    """
    mask = labels == IGNORE_INDEX
    n = mask.sum()
    if not n:
        return probs.sum() * 0.0
    # A weighted sum instead of a masked copy: the same mean, cheaper on CPUs.
    return (entropy_map(probs) * mask).sum() / n


def reference_code_entropy(probs: torch.Tensor) -> torch.Tensor:
    """The released code's term: mean over all pixels of ``-sum_c p_c * log_softmax(p)_c``.

    A log-softmax applied to probabilities: not an entropy. Its gradient is close to that of
    ``-sum_c p_c^2`` (max-squares). Offered only to reproduce the released behaviour.
    """
    return -(probs * F.log_softmax(probs, dim=1)).sum(1).mean()


def image_class_weights(probs: torch.Tensor, power: float) -> torch.Tensor:
    """Image-wise class-balancing weights of the max-squares paper (Chen et al., ICCV 2019, "IW"):
    ``(N / N_c) ** power`` for a pixel predicted as class ``c``, with ``N_c`` the number of pixels of its
    image predicted as ``c`` and ``N`` the image's pixels. Not differentiated (counts of argmaxes).

    Shape:
        probs (B, C, H, W) -> (B, H, W).
    """
    b, c = probs.shape[:2]
    pred = probs.detach().flatten(2).argmax(1)  # (B, HW)
    counts = torch.zeros(b, c, device=probs.device).scatter_add_(
        1, pred, torch.ones_like(pred, dtype=torch.float)
    )
    share = counts.gather(1, pred) / pred.shape[1]
    return share.pow(-power).view(b, *probs.shape[2:])


def balanced_reference_code_entropy(probs: torch.Tensor, power: float) -> torch.Tensor:
    """The released code's term with each pixel weighted by :func:`image_class_weights`: pixels of the
    classes an image predicts least weigh most, so the term sharpens minority regions more than the
    majority (sfseg's LD improvement; ``power = 0`` is :func:`reference_code_entropy`).

    Shape:
        probs (B, C, H, W) -> scalar.
    """
    per_pixel = -(probs * F.log_softmax(probs, dim=1)).sum(1)
    return (per_pixel * image_class_weights(probs, power)).mean()


def entropy_loss(probs: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel Shannon entropy: entropy minimisation (Vu et al., "ADVENT", CVPR 2019, its direct
    form) and TENT's objective (Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization",
    ICLR 2021).

    Shape:
        probs (B, C, H, W) -> scalar.
    """
    return entropy_map(probs).mean()


def max_squares_loss(probs: torch.Tensor) -> torch.Tensor:
    """Maximum squares loss, ``-1/2 * mean over pixels of sum_c p_c^2`` (Chen et al., ICCV 2019).

    Its gradient grows linearly, not logarithmically, with confidence, so easy (majority) pixels do not
    dominate as they do under entropy minimisation. The paper's image-wise class-balanced weighting is not
    included.

    Shape:
        probs (B, C, H, W) -> scalar.
    """
    return -0.5 * (probs**2).sum(1).mean()


def diversity_loss(probs: torch.Tensor) -> torch.Tensor:
    """SHOT's diversity term: ``sum_c pbar_c log pbar_c`` with ``pbar`` the mean prediction of the batch.

    Minimising it maximises the entropy of the average prediction, which keeps every class in use (it is
    ``KL(pbar || uniform) - log C``). Liang et al., "Do We Really Need to Access the Source Data?", ICML 2020.

    Shape:
        probs (B, C, H, W) -> scalar.
    """
    mean = probs.mean(dim=(0, 2, 3))
    return (mean * torch.log(mean.clamp(min=_EPS))).sum()


def confidence_weighted_ce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    confidence: torch.Tensor,
    threshold: float = 0.97,
    mean: str = "positive",
) -> torch.Tensor:
    """BE's loss: per-pixel cross-entropy weighted, per image, by the share of its pixels whose
    confidence is at least ``threshold``.

    Args:
        mean: ``positive`` averages over the pixels whose (unweighted, float32) cross-entropy is > 0, as
            the released code's ``loss[loss > 0].mean()``: saturated pixels (loss exactly 0) leave the
            denominator, so the loss is larger than the plain mean by 1 / (unsaturated share).
            ``labelled`` averages over every labelled pixel (label != 255).

    Shape:
        logits (B, C, H, W), labels (B, H, W), confidence (B, H, W) -> scalar (zero, with a graph, when no
        pixel counts).
    """
    weight = (confidence >= threshold).float().mean(dim=(1, 2))  # (B,)
    ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")  # (B, H, W)
    if mean == "positive":
        counted = ce > 0
    elif mean == "labelled":
        counted = labels != IGNORE_INDEX
    else:
        raise ValueError(f"mean must be 'positive' or 'labelled', got {mean!r}")
    if not counted.any():
        return logits.sum() * 0.0
    return (ce * weight.view(-1, 1, 1))[counted].mean()


def patch_mask(shape: tuple[int, ...], block: int, ratio: float, generator: torch.Generator | None, device):
    """MIC's random patch mask: each ``block x block`` patch is kept with probability ``1 - ratio``.

    Shape:
        shape (B, C, H, W) of the images -> (B, 1, H, W) float, 1 = kept.
    """
    b, _, h, w = shape
    keep = torch.rand(b, 1, -(-h // block), -(-w // block), generator=generator) >= ratio
    keep = keep.repeat_interleave(block, 2).repeat_interleave(block, 3)[:, :, :h, :w]
    return keep.to(device=device, dtype=torch.float32)


def masked_consistency(
    masked_logits: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor, threshold: float
) -> torch.Tensor:
    """MIC's loss: cross-entropy of the student on the masked images against the teacher's labels of the
    whole images, each image weighted by its share of teacher pixels at least ``threshold`` confident.

    Hoyer et al., "MIC: Masked Image Consistency for Context-Enhanced Domain Adaptation", CVPR 2023. It
    needs only target images and a teacher, so it is source-free.

    Shape:
        masked_logits (B, C, H, W), labels and confidence (B, H, W) -> scalar.
    """
    quality = (confidence >= threshold).float().mean((1, 2))
    ce = F.cross_entropy(masked_logits, labels.long(), ignore_index=IGNORE_INDEX, reduction="none")
    return (quality * ce.mean((1, 2))).mean()
