"""The adaptation recipe, in four groups a two-stage run can pass on whole.

* ``data``: which target images, at which size, through which input pipeline;
* ``runtime``: where and how fast it runs (device, precision, workers, state saving) — never what it computes;
* ``method``: what is computed (pseudo-labels, loss parts, teacher, mixing, BatchNorm handling);
* ``schedule``: how long and how fast it learns (rounds, epochs, batch size, optimiser).

Plus the run's identity: ``name``, ``checkpoint``, ``out``, ``seed``, ``init_from`` and ``select``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from sfseg.config import MAX_BATCH, MAX_SEED, MAX_SIDE, MAX_WORKERS, in_range, require
from sfseg.data.transforms import AugmentConfig
from sfseg.optim import OptimConfig


@dataclass
class DataConfig:
    """The target domain and its input pipeline.

    Attributes:
        dataset: ``toycity``, ``cityscapes``, ``folder``, ... (see ``sfseg.data.registry``).
        root: its root directory.
        protocol: the class protocol (``cityscapes19``, ``synthia16``, ...); empty = the dataset's own.
        train_split: the unlabelled target images adapted on (their labels, where present, feed only the
            pseudo-label diagnostics, never a loss).
        val_split: the labelled split scored after every round (monitoring only: ``final.pt`` is the last
            round). Empty = no scoring.
        input_size: ``[width, height]`` images are resized to before the network for pseudo-labels,
            evaluation and AdaBN; logits are upsampled back to the label resolution. Empty = native size.
        resize: how images are resized to ``input_size``: ``torch`` (bicubic, antialiased, on the
            device) or ``pil`` (PIL bicubic on the loader workers, as the released code).
        align_corners: bilinear upsampling of logits with ``align_corners=True`` (older DeepLab-v2 code,
            the released code) instead of ``False``; applies to pseudo-labels, evaluation and training.
        upsample: ``direct`` (network output straight to the label resolution) or ``two_step`` (first to
            the input size, where the intra-class thresholds are measured, then to the label resolution,
            where pixels are selected: the released code's pipeline).
        augment: training crops (reference: ``scale_crop`` 720 x {0.5..1.5}, 600 x 600).
        hflip: random horizontal flips of image and pseudo-label together.
    """

    dataset: str = "toycity"
    root: str = "data/toycity"
    protocol: str = ""
    train_split: str = "train"
    val_split: str = "val"
    input_size: list[int] = field(default_factory=list)
    resize: Literal["torch", "pil"] = "torch"
    align_corners: bool = False
    upsample: Literal["direct", "two_step"] = "direct"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    hflip: bool = True

    def check(self) -> None:
        require(bool(self.root), "root", "is empty; give the dataset's root directory")
        require(bool(self.train_split), "train_split", "is empty")
        require(
            not self.input_size
            or (len(self.input_size) == 2 and 0 < min(self.input_size))
            and max(self.input_size) <= MAX_SIDE,
            "input_size",
            f"must be [width, height] with sizes in 1..{MAX_SIDE}, or empty; got {self.input_size}",
        )


@dataclass
class RuntimeConfig:
    """Where and how fast a run goes. Nothing here changes what is computed, except where stated.

    Attributes:
        device: ``auto`` (the local rank's CUDA device when there is one, else the CPU), ``cpu``, ``cuda``
            or ``cuda:N``.
        amp: bfloat16 autocast for the training steps: true, false, or ``auto`` (on CUDA and on CPUs with
            native bfloat16 instructions, where it is about twice as fast; measured in docs/BENCHMARKS.md).
        amp_inference: bfloat16 autocast for pseudo-labelling, evaluation and AdaBN too. Changes the
            selected pixels slightly (measured in docs/BENCHMARKS.md); off by default.
        channels_last: channels-last memory format for convolutions (``auto``: on CUDA and on CPUs with
            bfloat16 support).
        num_workers: data-loading processes.
        eval_batch_size: batch size for pseudo-labelling, evaluation and AdaBN. With ``bn_mode: train``
            the labels depend on it (batch statistics), never on the number of processes.
        save_every: also save the resumable state every this many training steps (0 = at round
            boundaries only).
        logit_cache_gib: pseudo-labelling runs the network once per image and keeps its output for the
            selection pass, in memory up to this size, beyond it in a memory-mapped file in the run
            directory.
        save_pseudo_labels: keep each round's pseudo-label PNGs after the round.
        sync_bn: under ``torchrun``, SyncBatchNorm across processes (CUDA only).
        tensorboard: write TensorBoard event files to ``<out>/tensorboard``.
    """

    device: str = "auto"
    amp: bool | Literal["auto"] = False
    amp_inference: bool = False
    channels_last: Literal["auto", "on", "off"] = "auto"
    num_workers: int = 0
    eval_batch_size: int = 16
    save_every: int = 0
    logit_cache_gib: float = 4.0
    save_pseudo_labels: bool = True
    sync_bn: bool = False
    tensorboard: bool = True

    def check(self) -> None:
        in_range(self.num_workers, 0, MAX_WORKERS, "num_workers")
        in_range(self.eval_batch_size, 1, MAX_BATCH, "eval_batch_size")
        in_range(self.save_every, 0, 10**9, "save_every")
        in_range(self.logit_cache_gib, 0, 1024, "logit_cache_gib")
        require(
            re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", self.device) is not None,
            "device",
            f"must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        if self.device.startswith("cuda"):
            import torch

            require(
                torch.cuda.is_available(),
                "device",
                f"is {self.device!r} but CUDA is not available here (a CPU build of PyTorch, or no GPU); "
                "use auto or cpu",
            )


@dataclass
class PseudoLabelConfig:
    """How pseudo-labels are chosen each round.

    Attributes:
        kind: ``none`` (no pseudo-labels), ``argmax`` (naive self-training: every pixel),
            ``global_threshold`` (one confidence threshold), ``class_balanced`` (LD: intra-class
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
    """

    kind: Literal["none", "argmax", "global_threshold", "class_balanced"] = "class_balanced"
    alpha: float = 0.10
    alpha_step: float = 0.05
    threshold: float = 0.9
    local: bool = True
    channel_test: Literal["argmax", "any"] = "argmax"
    rank_rule: Literal["sfseg", "released"] = "sfseg"
    bins: int = 65536

    def check(self) -> None:
        require(0 < self.alpha <= 1, "alpha", f"must be in (0, 1], got {self.alpha}")
        require(0 <= self.alpha_step <= 1, "alpha_step", f"must be in [0, 1], got {self.alpha_step}")
        require(0 <= self.threshold <= 1, "threshold", f"must be in [0, 1], got {self.threshold}")
        in_range(self.bins, 16, 2**20, "bins")


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
    """

    ema: bool = False
    max_decay: float = 0.99
    confidence_threshold: float = 0.97
    loss_mean: Literal["positive", "labelled"] = "positive"

    def check(self) -> None:
        require(0 <= self.max_decay < 1, "max_decay", f"must be in [0, 1), got {self.max_decay}")
        require(
            0 <= self.confidence_threshold <= 1,
            "confidence_threshold",
            f"must be in [0, 1], got {self.confidence_threshold}",
        )


@dataclass
class MethodConfig:
    """What an adaptation method computes: a composition of parts (see ``sfseg.adapt.parts``).

    Attributes:
        adabn: re-estimate BatchNorm statistics on the target train set before anything else.
        bn_mode: ``train`` (batch statistics while labelling and training, as the reference code) or
            ``frozen`` (running statistics throughout).
        trainable: ``all`` (every parameter except BN scale and shift) or ``bn_affine`` (only BN scale and
            shift, as TENT).
        bn_affine: ``frozen`` (every BN scale and shift fixed) or ``downsample`` (the residual downsample
            branches' BN scale and shift train, as in the released code).
        pseudo_labels: pseudo-label selection.
        losses: the loss parts, by name (see ``sfseg.adapt.parts.LOSS_PARTS``).
        loss_weights: weight per loss part (default 1).
        negative_width: ``w`` of the complementary rank range ``k in floor(C/2) +- w`` (1-based: the k-th
            most probable class).
        teacher: the EMA teacher (BE stage).
        mixing: ``classmix`` pastes half the classes of each image onto the next (labels from the
            teacher, else from the pseudo-labels), before the student's forward pass.
        collapse_warning: warn (and record in the metrics) when a class's share of the pseudo-labels
            (of the predictions, for methods without pseudo-labels) falls below this fraction of its
            share in the source model's predictions; 0 disables.
    """

    adabn: bool = False
    bn_mode: Literal["train", "frozen"] = "train"
    trainable: Literal["all", "bn_affine"] = "all"
    bn_affine: Literal["frozen", "downsample"] = "frozen"
    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    losses: list[str] = field(default_factory=lambda: ["positive", "negative", "entropy_unselected"])
    loss_weights: dict[str, float] = field(default_factory=dict)
    negative_width: int = 3
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mixing: Literal["none", "classmix"] = "none"
    collapse_warning: float = 0.25

    def check(self) -> None:
        in_range(self.negative_width, 0, 64, "negative_width")
        require(
            0 <= self.collapse_warning < 1,
            "collapse_warning",
            f"must be in [0, 1), got {self.collapse_warning}",
        )
        for name, w in self.loss_weights.items():
            require(w >= 0, f"loss_weights.{name}", f"must be >= 0, got {w}")


@dataclass
class ScheduleConfig:
    """How long and how fast the network learns.

    Attributes:
        rounds: self-training rounds (0 = no training: source-only or AdaBN).
        epochs_per_round: passes over the target train set per round.
        batch_size: training batch size per process (under ``torchrun`` the global batch is
            ``batch_size x processes``).
        optim: SGD settings (backbone lr; head at ``head_lr_mult`` x).
        lr_round_decay: the learning rate is divided by this after every round (reference: sqrt 2).
        max_weight_growth: stop the run (one clear error, the last good state kept) when the trainable
            weights' norm grows beyond this many times its start (0 disables); non-finite losses and
            weights always stop it.
        max_loss: also stop when a loss part exceeds this value (0 disables).
    """

    rounds: int = 3
    epochs_per_round: int = 2
    batch_size: int = 8
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, head_lr_mult=10.0))
    lr_round_decay: float = 2**0.5
    max_weight_growth: float = 100.0
    max_loss: float = 0.0

    def check(self) -> None:
        in_range(self.rounds, 0, 100, "rounds")
        in_range(self.epochs_per_round, 1, 1000, "epochs_per_round")
        in_range(self.batch_size, 1, MAX_BATCH, "batch_size")
        require(self.lr_round_decay > 0, "lr_round_decay", f"must be positive, got {self.lr_round_decay}")
        require(
            self.max_weight_growth >= 0, "max_weight_growth", f"must be >= 0, got {self.max_weight_growth}"
        )
        require(self.max_loss >= 0, "max_loss", f"must be >= 0, got {self.max_loss}")


@dataclass
class SelectConfig:
    """Label-free model selection (see ``sfseg.select``).

    Attributes:
        validator: a validator name; when set, the run scores every round's model with it and keeps the
            one it prefers as ``selected.pt`` (``final.pt`` stays the last round). Empty = off.
        max_images: images of the target train split the validator reads (evenly spaced; 0 = all).
    """

    validator: str = ""
    max_images: int = 0

    def check(self) -> None:
        in_range(self.max_images, 0, 10**7, "max_images")


@dataclass
class AdaptConfig:
    """Recipe for ``sfseg adapt``. Adaptation reads only the target domain and the source *model*.

    Attributes:
        name: the method's name, for reports and run directories.
        checkpoint: the source model: an sfseg checkpoint or a community DeepLab-v2 file (imported).
        checkpoint_family: for a community file whose keys fit several families (see
            ``sfseg.models.foreign``).
        out: run directory (config, metrics.jsonl, pseudo-labels, checkpoints, resumable state).
        seed: seeds sampling, crops, flips, complementary ranks and ClassMix.
        init_from: a recipe name (e.g. ``ld``, or ``gta5_to_cityscapes/ld`` outside ToyCity) to run first
            into ``<out>/<name>`` with this run's ``checkpoint``, ``seed``, ``data`` and ``runtime``
            (its method and schedule are its own); this run starts from its final checkpoint:
            LDBE = LD, then BE. ``sfseg bench`` reuses the same seed's run of that recipe when it is in
            the method list.
        data, runtime, method, schedule, select: the groups above.
    """

    name: str = "ld"
    checkpoint: str = "runs/source/source.pt"
    checkpoint_family: str = ""
    out: str = "runs/adapt"
    seed: int = 0
    init_from: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    select: SelectConfig = field(default_factory=SelectConfig)

    def check(self) -> None:
        require(bool(self.out.strip()), "out", "is empty; give a run directory (e.g. out=runs/ld)")
        require(bool(self.checkpoint), "checkpoint", "is empty; give the source model's checkpoint")
        in_range(self.seed, 0, MAX_SEED, "seed")
        # alpha + r * alpha_step above 1 is not an error: the round's alpha is capped at 1 and the round
        # log says so (``alpha_capped``).

    def round_alpha(self, r: int) -> tuple[float, bool]:
        """Round ``r``'s selection fraction, and whether it was capped at 1."""
        pl = self.method.pseudo_labels
        raw = pl.alpha + r * pl.alpha_step
        return min(1.0, raw), raw > 1.0
