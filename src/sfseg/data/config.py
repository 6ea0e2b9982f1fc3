"""The data a stage reads and the input pipeline it is seen through (one config for source training and
adaptation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from sfseg.config import MAX_SIDE, require
from sfseg.data.transforms import AugmentConfig
from sfseg.errors import ConfigError
from sfseg.registry import DATASETS
from sfseg.yaml_io import brief


@dataclass
class DataConfig:
    """The images a stage reads, and the pipeline through which the network sees them. One class for
    source training (labelled source images) and adaptation (unlabelled target images).

    Attributes:
        dataset: ``toycity``, ``cityscapes``, ``gta5``, ``synthia``, ``folder``, ... (see
            ``sfseg.registry.DATASETS``).
        root: its root directory.
        protocol: the class protocol (``cityscapes19``, ``synthia16``, ...); empty = the dataset's own.
        train_split: the images trained on: for adaptation the unlabelled target images (their labels,
            where present, feed only the pseudo-label diagnostics, never a loss); for source training the
            labelled source images (ToyCity: ``source_train``; GTA5/SYNTHIA: ``all`` or a list file).
        val_split: a labelled split scored after training (adaptation: after every round, monitoring
            only: ``final.pt`` is the last round). Empty = no scoring.
        input_size: ``[width, height]`` images are resized to before the network for pseudo-labels,
            evaluation and AdaBN; logits are upsampled back to the label resolution. Empty = native size.
        resize: how images are resized to ``input_size``: ``torch`` (bicubic, antialiased, on the
            device) or ``pil`` (PIL bicubic on the loader workers, as the released code).
        align_corners: bilinear upsampling of logits with ``align_corners=True`` (older DeepLab-v2 code,
            the released code) instead of ``False``; applies to pseudo-labels, evaluation and training.
        upsample: ``direct`` (network output straight to the label resolution) or ``two_step`` (first to
            the input size, where the intra-class thresholds are measured, then to the label resolution,
            where pixels are selected: the released code's pipeline).
        augment: training crops (adaptation reference: ``scale_crop`` 720 x {0.5..1.5}, 600 x 600; source
            training on GTA5: ``resize_crop`` to 1280 x 720, random 1024 x 512 windows).
        hflip: random horizontal flips of image and target together.
    """

    RENAMED: ClassVar[dict[str, str]] = {
        "crop": "the training window is data.augment: {kind: resize_crop, size: [w, h], window: [w, h]}",
        "domain": "name the split instead (ToyCity: train_split: source_train, val_split: source_val)",
    }

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

    @classmethod
    def check_legacy(cls, data: dict, where: str) -> None:
        size = data.get("resize")
        if isinstance(size, list):
            raise ConfigError(
                f"{where}.resize: {brief(size)} is the old source-training size; write {where}.augment: "
                f"{{kind: resize_crop, size: {brief(size)}, window: [w, h]}} ({where}.resize now says how "
                "inference resizes to input_size: torch or pil)"
            )

    def check(self) -> None:
        require(bool(self.root), "root", "is empty; give the dataset's root directory")
        DATASETS.validate(self.dataset, "dataset")
        require(bool(self.train_split), "train_split", "is empty")
        require(
            not self.input_size
            or (len(self.input_size) == 2 and 0 < min(self.input_size))
            and max(self.input_size) <= MAX_SIDE,
            "input_size",
            f"must be [width, height] with sizes in 1..{MAX_SIDE}, or empty; got {self.input_size}",
        )
