"""ToyCity in the dataset registry: ``train``/``val`` are the target domain, ``source_train``/``source_val``
the source domain."""

from __future__ import annotations

from pathlib import Path

from sfseg.data.classes import TOYCITY, ClassProtocol
from sfseg.data.datasets import DatasetError, ListDataset, toycity_split
from sfseg.data.registry import register_dataset

SPLITS = {"train": ("target", "train"), "val": ("target", "val")} | {
    f"{d}_{s}": (d, s) for d in ("source", "target") for s in ("train", "val")
}


@register_dataset("toycity", TOYCITY)
def toycity(
    root: str | Path, split: str, protocol: ClassProtocol, labels: bool | str = True, progress: bool = False
) -> ListDataset:
    if protocol.name != TOYCITY.name:
        raise DatasetError(f"ToyCity has its own protocol {TOYCITY.name!r}, not {protocol.name!r}")
    if split not in SPLITS:
        raise DatasetError(f"ToyCity has no split {split!r}; splits: {sorted(SPLITS)}")
    domain, s = SPLITS[split]
    return toycity_split(root, domain, s, labels=bool(labels), progress=progress)
