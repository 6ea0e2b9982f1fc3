"""Adaptation methods as compositions of small parts.

A method is a pseudo-labeller plus a weighted list of loss parts, named in the config::

    method:
      pseudo_labels: {kind: class_balanced}
      losses: [positive, negative, reference_code]

Each loss part declares what it consumes (``needs_pseudo_labels``), so a composition that cannot work is
rejected when the method is built, before any data is read. New parts register in the registry
:data:`LOSS_PARTS` (``@LOSS_PARTS.register("name")`` on a :class:`LossPart` subclass).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sfseg.adapt import losses as L
from sfseg.adapt.config import MethodConfig
from sfseg.errors import MethodError
from sfseg.registry import LOSS_PARTS


@dataclass
class StepInputs:
    """What a loss part may read at one training step.

    Shape:
        logits (B, C, H, W); pseudo_labels (B, H, W) with 255 = unselected, or None; teacher_labels and
        teacher_confidence (B, H, W) when the method keeps a teacher; images (B, 3, H, W), the student's
        normalised input, and ``student``, its forward pass to label resolution, for parts that run it
        again (MIC). With ClassMix, all of them are those of the mixed images.
    """

    logits: torch.Tensor
    pseudo_labels: torch.Tensor | None
    generator: torch.Generator
    teacher_labels: torch.Tensor | None = None
    teacher_confidence: torch.Tensor | None = None
    images: torch.Tensor | None = None
    student: Callable[[torch.Tensor], torch.Tensor] | None = None
    _probs: torch.Tensor | None = field(default=None, repr=False)

    @property
    def probs(self) -> torch.Tensor:
        if self._probs is None:
            self._probs = self.logits.softmax(1)
        return self._probs


class LossPart:
    """A loss term of an adaptation method."""

    name: str = ""
    needs_pseudo_labels: bool = False
    needs_teacher: bool = False

    def __init__(self, cfg: MethodConfig, num_classes: int):
        self.cfg, self.num_classes = cfg, num_classes

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        raise NotImplementedError


@LOSS_PARTS.register()
class PositiveLearning(LossPart):
    """Cross-entropy on the selected pseudo-labels."""

    name, needs_pseudo_labels = "positive", True

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        return L.positive_loss(inputs.logits, inputs.pseudo_labels)


@LOSS_PARTS.register()
class NegativeLearning(LossPart):
    """``-log(1 - p_k)`` for a medium-rank complementary class; one rank per step, shared by the batch.

    ``k`` is 1-based (the k-th most probable class), drawn from ``floor(C/2) +- negative_width``.
    """

    name = "negative"

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        rank = L.sample_rank(self.num_classes, self.cfg.negative_width, inputs.generator)
        return L.negative_loss(inputs.probs, L.complementary_labels(inputs.probs, rank))


@LOSS_PARTS.register()
class EntropyUnselected(LossPart):
    """Entropy minimisation on pixels not selected as pseudo-labels (a secondary summary of the paper)."""

    name, needs_pseudo_labels = "entropy_unselected", True

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        return L.entropy_unselected(inputs.probs, inputs.pseudo_labels)


@LOSS_PARTS.register()
class ReferenceCodeEntropy(LossPart):
    """The released code's ``-sum p log_softmax(p)`` on all pixels (not an entropy; see losses.py)."""

    name = "reference_code"

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        return L.reference_code_entropy(inputs.probs)


@LOSS_PARTS.register()
class BalancedReferenceCodeEntropy(LossPart):
    """The released code's term, each pixel weighted by ``(N / N_c) ** balance_power`` (its predicted
    class's inverse share of the image, as max-squares' image-wise weighting): sfseg's improvement."""

    name = "reference_code_balanced"

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        return L.balanced_reference_code_entropy(inputs.probs, self.cfg.balance_power)


@LOSS_PARTS.register()
class Entropy(LossPart):
    """Entropy minimisation on every pixel (the TENT objective)."""

    name = "entropy"

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        return L.entropy_loss(inputs.probs)


@LOSS_PARTS.register()
class MaxSquares(LossPart):
    """Maximum squares loss (Chen et al., ICCV 2019)."""

    name = "max_squares"

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        return L.max_squares_loss(inputs.probs)


@LOSS_PARTS.register()
class Diversity(LossPart):
    """SHOT's diversity term; with ``entropy`` it is SHOT-IM (Liang et al., ICML 2020)."""

    name = "diversity"

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        return L.diversity_loss(inputs.probs)


@LOSS_PARTS.register()
class MaskedConsistency(LossPart):
    """MIC: the student on randomly masked images (``teacher.mask_ratio`` of ``teacher.mask_block``-pixel
    patches hidden) learns the teacher's labels of the whole images, each image weighted by its share of
    confident teacher pixels."""

    name, needs_teacher = "masked_consistency", True

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        t = self.cfg.teacher
        x = inputs.images
        mask = L.patch_mask(x.shape, t.mask_block, t.mask_ratio, inputs.generator, x.device)
        masked = inputs.student(x * mask.to(x.dtype))
        return L.masked_consistency(
            masked, inputs.teacher_labels, inputs.teacher_confidence, t.confidence_threshold
        )


@LOSS_PARTS.register()
class TeacherCE(LossPart):
    """BE's loss: cross-entropy to the teacher's labels, each image weighted by its share of confident
    pixels (``teacher.confidence_threshold``)."""

    name, needs_teacher = "teacher_ce", True

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        return L.confidence_weighted_ce(
            inputs.logits,
            inputs.teacher_labels,
            inputs.teacher_confidence,
            self.cfg.teacher.confidence_threshold,
            self.cfg.teacher.loss_mean,
        )


def build_loss_parts(cfg: MethodConfig, num_classes: int, rounds: int = 1) -> list[tuple[float, LossPart]]:
    """Instantiate ``cfg.losses`` with their weights, checking that each part's inputs will exist.

    Raises:
        MethodError: for an unknown part, a stray weight, or a composition that cannot work.
    """
    for n in cfg.losses:
        LOSS_PARTS.check(n, "losses")
    stray = sorted(set(cfg.loss_weights) - set(cfg.losses))
    if stray:
        raise MethodError(f"loss_weights names {stray}, which are not in losses {cfg.losses}")
    if len(set(cfg.losses)) != len(cfg.losses):
        raise MethodError(f"losses lists a part twice: {cfg.losses}")
    parts = []
    for name in cfg.losses:
        part = LOSS_PARTS.get(name)(cfg, num_classes)
        if part.needs_pseudo_labels and cfg.pseudo_labels.kind == "none":
            raise MethodError(
                f"loss part {name!r} needs pseudo-labels, but pseudo_labels.kind is 'none'; "
                "choose argmax, global_threshold or class_balanced"
            )
        if part.needs_teacher and not cfg.teacher.ema:
            raise MethodError(f"loss part {name!r} needs a teacher; set teacher.ema: true")
        parts.append((cfg.loss_weights.get(name, 1.0), part))
    if cfg.mixing != "none" and not cfg.teacher.ema and cfg.pseudo_labels.kind == "none":
        raise MethodError(
            f"mixing: {cfg.mixing} needs label maps to choose classes from: a teacher or pseudo-labels"
        )
    if rounds > 0 and not parts:
        raise MethodError("rounds > 0 but no loss parts are listed: nothing to train (set rounds: 0)")
    return parts


def total_loss(parts: list[tuple[float, LossPart]], inputs: StepInputs) -> tuple[torch.Tensor, dict]:
    """Weighted sum of the parts, and each part's value for logging."""
    values = {part.name: part(inputs) for _, part in parts}
    total = sum(w * values[part.name] for w, part in parts)
    return total, {k: float(v.detach()) for k, v in values.items()}
