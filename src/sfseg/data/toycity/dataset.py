"""ToyCity in the dataset registry: ``train``/``val`` are the target domain, ``source_train``/``source_val``
the source domain (:data:`~sfseg.data.toycity.layout.SPLIT_NAMES`). A world is small, so a split is read
into memory once; every label is checked (a value that is neither a class index nor 255 is an error naming
the file)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from sfseg.data.classes import TOYCITY, ClassProtocol
from sfseg.data.file_dataset import list_entries, problems_error
from sfseg.data.images import read_image, read_label
from sfseg.data.toycity.layout import SPLIT_NAMES
from sfseg.errors import DatasetError
from sfseg.registry import DATASETS

TOYCITY_LAYOUT = """\
  <root>/toycity.json
  <root>/{source,target}_{train,val}.txt
  <root>/{source,target}/images/{train,val}/00000.png ...
  <root>/{source,target}/labels/{train,val}/00000.png ...
Create it with:  sfseg toycity generate --out <root>"""


class ToyCitySplit(Dataset):
    """One ToyCity split: the samples its list file names, read into memory once (the worlds are small).

    Args:
        root: dataset root; list entries are relative to it.
        list_file: the list file.
        num_classes: number of classes, for label validation.
        labels: read labels when the list file names them.
        progress: show a progress bar while loading.

    Items are dicts with ``image`` (3, H, W) uint8, ``index`` and, when labels are read, ``label``
    (H, W) int64.
    """

    def __init__(
        self,
        root: str | Path,
        list_file: str | Path,
        num_classes: int,
        labels: bool = True,
        progress: bool = False,
    ):
        self.root = Path(root)
        list_file = Path(list_file)
        entries = [fields for _, fields in list_entries(list_file)]
        if not entries:
            raise DatasetError(f"list file {list_file} is empty")
        # Anything at the path counts as present: a FIFO or a folder is then refused by name when read.
        missing = [p for e in entries for p in e[: 2 if labels else 1] if not os.path.lexists(self.root / p)]
        if missing:
            shown = "\n  ".join(str(self.root / p) for p in missing[:10])
            raise DatasetError(f"{len(missing)} file(s) named in {list_file} are missing, e.g.:\n  {shown}")
        self.names = [e[0] for e in entries]
        self.has_labels = labels and all(len(e) > 1 for e in entries)
        it = tqdm(entries, desc=f"loading {list_file.name}", disable=not progress, leave=False)
        images, label_maps, problems = [], [], []
        for e in it:
            try:
                image = read_image(self.root / e[0])
                images.append(torch.from_numpy(image.copy()).permute(2, 0, 1))
                if self.has_labels:
                    label = read_label(self.root / e[1], num_classes)
                    if label.shape != image.shape[:2]:
                        raise DatasetError(
                            f"{self.root / e[1]}: label is {label.shape[1]}x{label.shape[0]} but its image "
                            f"{self.root / e[0]} is {image.shape[1]}x{image.shape[0]}; regenerate the pair"
                        )
                    label_maps.append(torch.from_numpy(label.copy()))
            except DatasetError as err:
                problems.append(str(err))
        if problems:
            raise problems_error(f"{list_file}", problems)
        self.images = images
        self.labels = label_maps
        self.image_sizes = [(int(im.shape[-1]), int(im.shape[-2])) for im in images]

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> torch.Tensor:
        return self.images[i]

    def label(self, i: int) -> torch.Tensor:
        return self.labels[i]

    def __getitem__(self, i: int) -> dict:
        item = {"image": self.images[i], "index": i}
        if self.has_labels:
            item["label"] = self.labels[i]
        return item


def check_toycity_root(root: str | Path) -> Path:
    """Return ``root`` if it holds a ToyCity tree, else raise an error showing the expected layout."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"ToyCity data directory not found: {root}\nExpected layout:\n{TOYCITY_LAYOUT}")
    needed = ["toycity.json"] + [f"{d}_{s}.txt" for d in ("source", "target") for s in ("train", "val")]
    absent = [n for n in needed if not (root / n).is_file()]
    if absent:
        found = sorted(p.name for p in root.iterdir())[:20]
        raise DatasetError(
            f"{root} is not a ToyCity tree: missing {absent}; found {found}\n"
            f"Expected layout:\n{TOYCITY_LAYOUT}"
        )
    return root


def toycity_split(
    root: str | Path, domain: str, split: str, labels: bool = True, progress: bool = False
) -> ToyCitySplit:
    """One ToyCity split (``domain`` in source/target, ``split`` in train/val)."""
    root = check_toycity_root(root)
    return ToyCitySplit(
        root, root / f"{domain}_{split}.txt", TOYCITY.num_classes, labels=labels, progress=progress
    )


@DATASETS.register("toycity", protocol=TOYCITY)
def toycity(
    root: str | Path, split: str, protocol: ClassProtocol, labels: bool | str = True, progress: bool = False
) -> ToyCitySplit:
    if protocol.name != TOYCITY.name:
        raise DatasetError(f"ToyCity has its own protocol {TOYCITY.name!r}, not {protocol.name!r}")
    if split not in SPLIT_NAMES:
        raise DatasetError(f"ToyCity has no split {split!r}; splits: {sorted(SPLIT_NAMES)}")
    domain, s = SPLIT_NAMES[split]
    return toycity_split(root, domain, s, labels=bool(labels), progress=progress)
