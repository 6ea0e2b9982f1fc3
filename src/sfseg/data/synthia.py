"""SYNTHIA-RAND-CITYSCAPES (Ros et al., CVPR 2016): the other synthetic source domain.

Its label PNGs have 16 bits per channel and several channels, with the class id in the first (R) channel.
Pillow opens them as 8-bit and destroys the ids, so they are decoded with OpenCV (``IMREAD_UNCHANGED``
gives BGR order: the class is channel index 2). Only the 16-class protocol is offered: the "19-class
SYNTHIA" shortcut of some toolkits is not the protocol the field reports.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sfseg.data.classes import SYNTHIA16, SYNTHIA_IDS, ClassProtocol, id_lut
from sfseg.data.file_dataset import FileListDataset, Sample, lut_codec, paired_files
from sfseg.data.images import MAX_IMAGE_BYTES, png_header
from sfseg.errors import DatasetError, RunDirError
from sfseg.fileio import read_bytes
from sfseg.registry import DATASETS

LAYOUT = """\
  <root>/RGB/0000000.png ... 0009399.png         (RGB 1280x760)
  <root>/GT/LABELS/0000000.png ... 0009399.png   (16 bits per channel; class id in the first channel)"""


def read_synthia_label(path: Path) -> np.ndarray:
    """The class-id channel of a SYNTHIA label PNG.

    Shape:
        (H, W) uint16.
    """
    png_header(path)  # a regular PNG file of a sane size, before OpenCV decodes anything
    try:
        data = read_bytes(path, MAX_IMAGE_BYTES, what="label file")
    except RunDirError as e:
        raise DatasetError(str(e)) from None
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DatasetError(f"{path}: OpenCV cannot read this file")
    if raw.dtype != np.uint16 or raw.ndim != 3:
        raise DatasetError(
            f"{path}: expected a 16-bit multi-channel SYNTHIA label PNG, got dtype {raw.dtype} with shape "
            f"{raw.shape}; is this the GT/LABELS folder of SYNTHIA-RAND-CITYSCAPES?"
        )
    ids = raw[:, :, 2]  # OpenCV returns BGR(A): the first (R) channel is index 2
    if ids.max() >= 256:
        raise DatasetError(
            f"{path}: class id {int(ids.max())} >= 256 in the first channel; not a SYNTHIA label"
        )
    return ids


@DATASETS.register("synthia", protocol=SYNTHIA16)
def synthia(
    root: str | Path, split: str, protocol: ClassProtocol, labels: bool | str = True
) -> FileListDataset:
    """SYNTHIA-RAND-CITYSCAPES images (and labels), ``split`` ``all`` or a list file of names."""
    root = Path(root)
    if protocol.name != SYNTHIA16.name:
        raise DatasetError(
            f"SYNTHIA is evaluated with the 16-class protocol (synthia16), not {protocol.name!r}; the "
            "'19-class SYNTHIA' variant and its mIoU16 = mIoU19*19/16 shortcut are not that protocol."
        )
    img_dir, lab_dir = root / "RGB", root / "GT" / "LABELS"
    names, labels = paired_files(
        root,
        "SYNTHIA-RAND-CITYSCAPES",
        LAYOUT,
        img_dir,
        lab_dir,
        split,
        labels,
        "Restore them or use a list file.",
    )
    codec = lut_codec(
        id_lut(SYNTHIA_IDS, protocol), SYNTHIA_IDS, "SYNTHIA class ids 0..22", read_synthia_label
    )
    samples = [Sample(n, img_dir / n, lab_dir / n if labels else None) for n in names]
    return FileListDataset(samples, protocol, codec if labels else None)
