"""The adaptation recipe: which pseudo-labels, which loss parts, and how to optimise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sfseg.data.transforms import AugmentConfig
from sfseg.engine.optim import OptimConfig


@dataclass
class PseudoLabelConfig:
    """How pseudo-labels are chosen each round.

    Attributes:
        kind: ``none`` (no pseudo-labels), ``argmax`` (naive self-training: every pixel),
            ``global_threshold`` (one confidence threshold), ``class_balanced`` (LD: intra-class
            thresholds fused with per-image top-alpha).
        alpha: the selection fraction in round 0 (class_balanced).
        alpha_step: added to alpha after every round.
        threshold: the global confidence threshold (global_threshold).
        local: fuse the per-image top-alpha selection (class_balanced). Without it, class_balanced is
            CBST-style class-wise top-p self-training (Zou et al., "Unsupervised Domain Adaptation for
            Semantic Segmentation via Class-Balanced Self-Training", ECCV 2018).
        channel_test: ``argmax`` (default) or ``any`` (the reference code's any-channel test).
        bins: histogram bins for the intra-class thresholds (threshold error <= one bin width).
    """

    kind: Literal["none", "argmax", "global_threshold", "class_balanced"] = "class_balanced"
    alpha: float = 0.10
    alpha_step: float = 0.05
    threshold: float = 0.9
    local: bool = True
    channel_test: Literal["argmax", "any"] = "argmax"
    bins: int = 65536


@dataclass
class TeacherConfig:
    """The EMA (mean) teacher of the BE stage.

    Attributes:
        ema: keep an EMA teacher; its predictions, overridden by the pseudo-labels where they exist
            (confidence 1), feed the ``teacher_ce`` loss part and choose ClassMix's classes.
        max_decay: decay cap of ``d_t = min(1 - 1/(t+1), max_decay)``.
        confidence_threshold: ``teacher_ce`` weights each image by its share of pixels at or above this.
    """

    ema: bool = False
    max_decay: float = 0.99
    confidence_threshold: float = 0.97


@dataclass
class AdaptConfig:
    """Recipe for ``sfseg adapt``. Adaptation reads only the target domain and the source *model*.

    Attributes:
        method: a name for reports and run directories.
        dataset: the target dataset (``toycity``, ``cityscapes``, ``folder``, ...; see
            ``sfseg.data.registry``).
        data_root: its root directory.
        protocol: the class protocol (``cityscapes19``, ``synthia16``, ...); empty = the dataset's own.
        train_split: the unlabelled target images adapted on (their labels, where present, feed only the
            pseudo-label diagnostics, never a loss).
        val_split: the labelled split scored after every round (monitoring; the final model is the last).
        checkpoint: the source model: an sfseg checkpoint or a community DeepLab-v2 file (imported).
        checkpoint_family: for a community file whose keys fit several families (see
            ``sfseg.models.foreign``).
        input_size: ``[width, height]`` the images are resized to before the network, for pseudo-labels
            and evaluation; logits are upsampled back to the label resolution. Empty = native size.
        eval_batch_size: batch size for pseudo-labelling and evaluation.
        augment: training crops (reference: ``scale_crop`` 720 x {0.5..1.5}, 600 x 600).
        num_workers: data-loading processes for training.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        amp: bfloat16 autocast for the training steps (pseudo-labels and evaluation stay in float32, so
            confidence thresholds are not quantised).
        out: run directory (config, metrics.jsonl, pseudo-labels, checkpoints).
        seed: seeds sampling, flips and complementary ranks.
        adabn: re-estimate BatchNorm statistics on the target train set before anything else.
        rounds: self-training rounds (0 = no training: source-only or AdaBN).
        epochs_per_round: passes over the target train set per round.
        batch_size: training batch size.
        hflip: random horizontal flips of image and pseudo-label together.
        bn_mode: ``train`` (batch statistics while labelling and training, as the reference code) or
            ``frozen`` (running statistics throughout).
        trainable: ``all`` (every parameter except BN scale and shift, as the reference code) or
            ``bn_affine`` (only BN scale and shift, as TENT).
        pseudo_labels: pseudo-label selection.
        losses: the loss parts, by name (see ``sfseg.adapt.parts.LOSS_PARTS``).
        loss_weights: weight per loss part (default 1).
        negative_width: ``w`` of the complementary rank range ``floor(C/2) +- w``.
        optim: SGD settings (backbone lr; head at ``head_lr_mult`` x).
        lr_round_decay: the learning rate is divided by this after every round (reference: sqrt 2).
        save_pseudo_labels: keep each round's pseudo-label PNGs in the run directory.
        teacher: the EMA teacher (BE stage).
        mixing: ``classmix`` pastes half the classes of each image onto the next (labels from the
            teacher, else from the pseudo-labels), before the student's forward pass.
        init_from: a recipe name (e.g. ``ld``, or ``gta5_to_cityscapes/ld`` outside ToyCity) to run
            first, as its recipe says (only data, checkpoint and seed are passed on); this run starts
            from its final checkpoint: LDBE = LD, then BE.
            ``sfseg bench`` reuses the same seed's run of that recipe when it is in the method list.
        collapse_warning: warn (and record in the metrics) when a class's share of the pseudo-labels
            (of the predictions, for methods without pseudo-labels) falls below this fraction of its
            share in the source model's predictions; 0 disables.
    """

    method: str = "ld"
    dataset: str = "toycity"
    data_root: str = "data/toycity"
    protocol: str = ""
    train_split: str = "train"
    val_split: str = "val"
    checkpoint: str = "runs/source/source.pt"
    checkpoint_family: str = ""
    input_size: list[int] = field(default_factory=list)
    eval_batch_size: int = 16
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 0
    device: str = "auto"
    amp: bool = False
    out: str = "runs/adapt"
    seed: int = 0
    adabn: bool = False
    rounds: int = 3
    epochs_per_round: int = 2
    batch_size: int = 8
    hflip: bool = True
    bn_mode: Literal["train", "frozen"] = "train"
    trainable: Literal["all", "bn_affine"] = "all"
    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    losses: list[str] = field(default_factory=lambda: ["positive", "negative", "entropy_unselected"])
    loss_weights: dict[str, float] = field(default_factory=dict)
    negative_width: int = 3
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, head_lr_mult=10.0))
    lr_round_decay: float = 2**0.5
    save_pseudo_labels: bool = True
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mixing: Literal["none", "classmix"] = "none"
    init_from: str = ""
    collapse_warning: float = 0.25
