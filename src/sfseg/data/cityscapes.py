"""Cityscapes (Cordts et al., CVPR 2016): the real target domain. Labels are read as labelIds and remapped.

The official download has ``*_gtFine_labelIds.png`` (ids 0..33); ``*_labelTrainIds.png`` files are made by
some tools and are not read here, so one table (``classes.CITYSCAPES_LABELS``) decides every mapping.
"""

from __future__ import annotations

from pathlib import Path

from sfseg.data.classes import CITYSCAPES19, CITYSCAPES_LABELS, ClassProtocol, cityscapes_lut
from sfseg.data.file_dataset import FileListDataset, Sample, layout_error, lut_codec, missing_error
from sfseg.registry import DATASETS

LAYOUT = """\
  <root>/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png   (RGB)
  <root>/gtFine/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_gtFine_labelIds.png    (uint8 labelIds)"""


def cityscapes_codec(protocol: ClassProtocol):
    """Cityscapes/GTA5 labelIds (0..33) -> class indices of ``protocol``."""
    return lut_codec(
        cityscapes_lut(protocol)[:34], [lid for _, lid, _ in CITYSCAPES_LABELS], "labelIds 0..33"
    )


@DATASETS.register("cityscapes", protocol=CITYSCAPES19)
def cityscapes(
    root: str | Path, split: str, protocol: ClassProtocol, labels: bool | str = True
) -> FileListDataset:
    """One Cityscapes split.

    Args:
        root: the dataset root (holding ``leftImg8bit/`` and ``gtFine/``).
        split: ``train``, ``val`` or ``test``.
        protocol: ``cityscapes19`` or ``synthia16`` (terrain, truck, train -> 255).
        labels: True (required), False (images only) or ``"auto"`` (read them when ``gtFine/<split>``
            exists; source-free adaptation never needs target train labels).
    """
    root = Path(root)
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    if not images:
        raise layout_error(root, "Cityscapes", f"no images under leftImg8bit/{split}/<city>/", LAYOUT)
    gt_dir = root / "gtFine" / split
    if labels == "auto":
        labels = gt_dir.is_dir()
    samples = []
    for img in images:
        name = str(img.relative_to(root / "leftImg8bit" / split))
        lab = gt_dir / name.replace("_leftImg8bit.png", "_gtFine_labelIds.png") if labels else None
        samples.append(Sample(name, img, lab))
    if labels:
        missing = [s.label for s in samples if not s.label.is_file()]
        if missing:
            raise missing_error(
                "Cityscapes",
                f"gtFine label file(s) for {split}",
                missing,
                "Each image needs gtFine/<split>/<city>/<name>_gtFine_labelIds.png "
                "(from gtFine_trainvaltest.zip).",
            )
    return FileListDataset(samples, protocol, cityscapes_codec(protocol) if labels else None)
