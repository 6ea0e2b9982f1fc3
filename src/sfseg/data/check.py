"""``sfseg check-data``: read every file of a split up front and list every problem at once.

Dataset construction already refuses missing files, unreadable headers and image/label size mismatches
(all listed in one error). This check also decodes every pixel, so truncated files and label values
outside the protocol are found before a run spends hours, not in the middle of it.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from pathlib import Path

from torch.utils.data import Dataset
from tqdm import tqdm

from sfseg.data.registry import build_dataset
from sfseg.errors import DatasetError

DEFAULT_SPLITS = {
    "toycity": ["source_train", "source_val", "train", "val"],
    "cityscapes": ["train", "val"],
    "gta5": ["all"],
    "synthia": ["all"],
}


def _read(dataset: Dataset, i: int) -> str | None:
    try:
        if getattr(dataset, "has_labels", False):
            dataset[i]
        else:
            dataset.image(i)
    except DatasetError as e:
        return str(e)
    return None


def check_split(
    name: str, root: str | Path, split: str, protocol: str = "", progress: bool = True, **options
) -> tuple[int, list[str]]:
    """(number of samples, problems) of one split; every image and label is fully decoded."""
    try:
        dataset = build_dataset(name, root, split, protocol, labels="auto", progress=progress, **options)
    except DatasetError as e:
        return 0, [str(e)]
    with cf.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        results = list(
            tqdm(
                pool.map(lambda i: _read(dataset, i), range(len(dataset))),
                total=len(dataset),
                desc=f"checking {name} {split}",
                disable=not progress,
                leave=False,
            )
        )
    return len(dataset), [r for r in results if r]
