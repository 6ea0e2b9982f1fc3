"""What an adaptation method computes: pseudo-labels, loss parts, teacher, mixing and normalisation
handling (``method:`` in a recipe). The recipe around it (data, runtime, schedule) is
``sfseg.engine.training.recipe.AdaptConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sfseg.config import in_range, require
from sfseg.errors import ConfigError
from sfseg.registry import LOSS_PARTS, METHODS, MIXINGS, PSEUDO_LABELLERS


@dataclass
class PseudoLabelConfig:
    """How pseudo-labels are chosen each round.

    Attributes:
        kind: ``none`` (no pseudo-labels) or a registered pseudo-labeller
            (``sfseg.registry.PSEUDO_LABELLERS``): ``argmax`` (naive self-training: every
            pixel), ``global_threshold`` (one confidence threshold), ``class_balanced`` (LD: intra-class
            thresholds fused with per-image top-alpha).
        alpha: the selection fraction in round 0 (class_balanced).
        alpha_step: added to alpha after every round; alpha is capped at 1 (the cap is logged).
        threshold: the global confidence threshold (global_threshold).
        local: fuse the per-image top-alpha selection (class_balanced). Without it, class_balanced is
            CBST-style class-wise top-p self-training (Zou et al., "Unsupervised Domain Adaptation for
            Semantic Segmentation via Class-Balanced Self-Training", ECCV 2018).
        channel_test: ``argmax`` (default) or ``any`` (the released code's any-channel test).
        rank_rule: ``sfseg`` (keep ``k = max(1, ceil(alpha * N))`` pixels, ranked by the saturation-free
            score, with ``>=``) or ``released`` (the released code: ``k = int(alpha * N)``, float32
            confidences compared with ``>``; see docs/method-notes.md).
        bins: histogram bins for the intra-class thresholds (threshold error <= one bin width).
        class_floor: each class keeps, by the intra-class thresholds, at least ``class_floor * alpha * N``
            pixels (N: all pixels; all of the class if it has fewer): its ``alpha`` is raised to
            ``class_floor * alpha * N / N_c`` (at most 1), a floor under the rare classes' share of the
            pseudo-labels (0 = off: the paper's rule).
    """

    kind: str = "class_balanced"
    alpha: float = 0.10
    alpha_step: float = 0.05
    threshold: float = 0.9
    local: bool = True
    channel_test: Literal["argmax", "any"] = "argmax"
    rank_rule: Literal["sfseg", "released"] = "sfseg"
    bins: int = 65536
    class_floor: float = 0.0

    def check(self) -> None:
        if self.kind != "none":
            PSEUDO_LABELLERS.validate(self.kind, "kind")
        require(0 < self.alpha <= 1, "alpha", f"must be in (0, 1], got {self.alpha}")
        require(0 <= self.alpha_step <= 1, "alpha_step", f"must be in [0, 1], got {self.alpha_step}")
        require(0 <= self.threshold <= 1, "threshold", f"must be in [0, 1], got {self.threshold}")
        in_range(self.bins, 16, 2**20, "bins")
        in_range(self.class_floor, 0.0, 1.0, "class_floor")


@dataclass
class TeacherConfig:
    """The EMA (mean) teacher of the BE stage.

    Attributes:
        ema: keep an EMA teacher; its predictions, overridden by the pseudo-labels where they exist
            (confidence 1), feed the ``teacher_ce`` loss part and choose ClassMix's classes.
        max_decay: decay cap of ``d_t = min(1 - 1/(t+1), max_decay)``.
        confidence_threshold: ``teacher_ce`` weights each image by its share of pixels at or above this.
        loss_mean: how ``teacher_ce`` averages: ``positive`` (over pixels whose loss is > 0, as the
            released code's ``loss[loss > 0].mean()``) or ``labelled`` (over every labelled pixel).
        mask_ratio, mask_block: the ``masked_consistency`` part (MIC): the share of ``mask_block`` x
            ``mask_block`` patches hidden from the student (MIC: 0.7 of 64-pixel patches at 1024 x 512).
    """

    ema: bool = False
    max_decay: float = 0.99
    confidence_threshold: float = 0.97
    loss_mean: Literal["positive", "labelled"] = "positive"
    mask_ratio: float = 0.7
    mask_block: int = 8

    def check(self) -> None:
        require(0 <= self.max_decay < 1, "max_decay", f"must be in [0, 1), got {self.max_decay}")
        require(0 <= self.mask_ratio < 1, "mask_ratio", f"must be in [0, 1), got {self.mask_ratio}")
        in_range(self.mask_block, 1, 1024, "mask_block")
        require(
            0 <= self.confidence_threshold <= 1,
            "confidence_threshold",
            f"must be in [0, 1], got {self.confidence_threshold}",
        )


@dataclass
class MethodConfig:
    """What an adaptation method computes: by default a composition of parts (see ``sfseg.adapt.parts``).

    Attributes:
        kind: the method class (``sfseg.registry.METHODS``): ``self_training`` composes the parts
            below; a method registered by a plugin may read its own ``options``.
        options: free-form settings of a registered method (the default one takes none).
        adabn: re-estimate BatchNorm statistics on the target train set before anything else (networks
            with BatchNorm layers only).
        bn_mode: ``train`` (batch statistics while labelling and training, as the reference code) or
            ``frozen`` (running statistics throughout); acts on BatchNorm layers (a network without any,
            such as a ViT, behaves the same in both).
        trainable: ``all`` (every parameter, BatchNorm scale and shift as ``bn_affine`` says) or
            ``norm_affine`` (only the scale and shift of the normalisation layers, BatchNorm, LayerNorm or
            GroupNorm: TENT).
        bn_affine: ``frozen`` (every BatchNorm scale and shift fixed: the DeepLab-v2 reference),
            ``downsample`` (the residual downsample branches' ones train, as in the released code) or
            ``train`` (all train, as DAFormer's heads do). LayerNorm/GroupNorm affine parameters train
            with the rest.
        pseudo_labels: pseudo-label selection.
        losses: the loss parts, by name (see ``sfseg.registry.LOSS_PARTS``).
        loss_weights: weight per loss part (default 1).
        negative_width: ``w`` of the complementary rank range ``k in floor(C/2) +- w`` (1-based: the k-th
            most probable class).
        balance_power: exponent of the image-wise class weights of ``reference_code_balanced``
            (``(N / N_c) ** power``; 0.2 as in the max-squares paper; 0 = unweighted).
        teacher: the EMA teacher (BE stage).
        mixing: ``none`` or a registered mixing (``sfseg.registry.MIXINGS``): ``classmix`` pastes
            half the classes of each image onto the next (labels from the teacher, else from the
            pseudo-labels), before the student's forward pass.
        collapse_warning: warn (and record in the metrics) when a class's share of the pseudo-labels
            (of the predictions, for methods without pseudo-labels) falls below this fraction of its
            share in the source model's predictions; 0 disables.
    """

    kind: str = "self_training"
    options: dict[str, Any] = field(default_factory=dict)
    adabn: bool = False
    bn_mode: Literal["train", "frozen"] = "train"
    trainable: Literal["all", "norm_affine"] = "all"
    bn_affine: Literal["frozen", "downsample", "train"] = "frozen"
    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    losses: list[str] = field(default_factory=lambda: ["positive", "negative", "reference_code"])
    loss_weights: dict[str, float] = field(default_factory=dict)
    negative_width: int = 3
    balance_power: float = 0.2
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mixing: str = "none"
    collapse_warning: float = 0.25

    @classmethod
    def check_legacy(cls, data: dict, where: str) -> None:
        if data.get("trainable") == "bn_affine":
            raise ConfigError(
                f"{where}.trainable: bn_affine is now norm_affine (the scale and shift of every "
                "normalisation layer: BatchNorm, LayerNorm, GroupNorm)"
            )

    def check(self) -> None:
        METHODS.validate(self.kind, "kind")
        if self.mixing != "none":
            MIXINGS.validate(self.mixing, "mixing")
        for name in self.losses:
            LOSS_PARTS.validate(name, "losses")
        in_range(self.negative_width, 0, 64, "negative_width")
        in_range(self.balance_power, 0.0, 1.0, "balance_power")
        require(
            0 <= self.collapse_warning < 1,
            "collapse_warning",
            f"must be in [0, 1), got {self.collapse_warning}",
        )
        for name, w in self.loss_weights.items():
            require(w >= 0, f"loss_weights.{name}", f"must be >= 0, got {w}")
