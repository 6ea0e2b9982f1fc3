"""GTA5, "Playing for Data" (Richter et al., ECCV 2016): the synthetic source domain.

Labels are 8-bit *palette* PNGs whose palette index is the Cityscapes labelId, so they are read as indices
(never converted to L or RGB). Known quirks handled up front, before any training: some image/label pairs
differ in size (the label is resized to the image, nearest neighbour, and the count is reported), and copies
in circulation miss some ids (numbering gaps are reported; a file without its partner is an error).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from tqdm import tqdm

from sfseg.data.cityscapes import cityscapes_codec
from sfseg.data.classes import CITYSCAPES19, ClassProtocol
from sfseg.data.file_dataset import FileListDataset, Sample, paired_files
from sfseg.data.images import header_size
from sfseg.errors import DatasetError
from sfseg.registry import DATASETS

LAYOUT = """\
  <root>/images/00001.png ... 24966.png   (RGB, nominally 1914x1052)
  <root>/labels/00001.png ... 24966.png   (8-bit palette PNG; palette index = Cityscapes labelId)"""


def _ranges(ids: list[int]) -> str:
    out, start = [], None
    for a, b in zip(ids, ids[1:] + [None]):
        start = a if start is None else start
        if b != a + 1:
            out.append(f"{start:05d}" if start == a else f"{start:05d}-{a:05d}")
            start = None
    return ", ".join(out)


@DATASETS.register("gta5", protocol=CITYSCAPES19)
def gta5(
    root: str | Path,
    split: str,
    protocol: ClassProtocol,
    labels: bool | str = True,
    check_sizes: bool = True,
    progress: bool = False,
) -> FileListDataset:
    """GTA5 images (and labels).

    Args:
        root: the dataset root (holding ``images/`` and ``labels/``).
        split: ``all``, or a list file of image names (one per line, e.g. ``00001.png``).
        protocol: ``cityscapes19`` or ``synthia16``.
        labels: read labels (``"auto"``: when ``labels/`` exists).
        check_sizes: read every pair's PNG header up front and report size mismatches.
        progress: show a progress bar for that check.
    """
    root = Path(root)
    img_dir, lab_dir = root / "images", root / "labels"
    names, labels = paired_files(
        root,
        "GTA5",
        LAYOUT,
        img_dir,
        lab_dir,
        split,
        labels,
        "Restore them from the download, or leave their ids out with a list file (split=<list file>).",
    )
    numbered = sorted(int(Path(n).stem) for n in names if Path(n).stem.isdigit())
    if split == "all" and numbered:
        gaps = sorted(set(range(numbered[0], numbered[-1] + 1)) - set(numbered))
        if gaps:
            warnings.warn(
                f"GTA5: {len(gaps)} id(s) absent from {root} (skipped): {_ranges(gaps)}", stacklevel=2
            )
    samples = [Sample(n, img_dir / n, lab_dir / n if labels else None) for n in names]
    if labels and check_sizes:
        mismatched = []
        for s in tqdm(samples, desc="GTA5: checking sizes", disable=not progress, leave=False):
            if header_size(s.image) != header_size(s.label):
                mismatched.append(s.name)
        if mismatched:
            warnings.warn(
                f"GTA5: {len(mismatched)} label(s) differ in size from their image and are resized to it "
                f"(nearest neighbour): {', '.join(mismatched[:10])}{' ...' if len(mismatched) > 10 else ''}",
                stacklevel=2,
            )
    if labels and protocol.name not in ("cityscapes19", "synthia16"):
        raise DatasetError(f"GTA5 labels map to cityscapes19 or synthia16, not {protocol.name!r}")
    return FileListDataset(
        samples, protocol, cityscapes_codec(protocol) if labels else None, repair_size=True
    )
