"""A user's own domain: a folder of images, optional label PNGs and an optional mapping file.

Layout::

    <root>/images/**/<name>.{png,jpg,jpeg}
    <root>/labels/**/<name>.png          (optional; same relative path and stem as the image)

Without a mapping file the labels must already hold class indices of the protocol (255 = ignore). With one
(YAML or JSON, ``raw id: class name`` or ``raw id: ignore``), every raw value a label may hold is listed;
any other value is an error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sfseg import IGNORE_INDEX
from sfseg.data.classes import CITYSCAPES19, ClassProtocol
from sfseg.data.file_dataset import FileListDataset, Sample, layout_error, lut_codec, missing_error
from sfseg.errors import ConfigError, DatasetError, RunDirError
from sfseg.fileio import read_bytes
from sfseg.registry import DATASETS
from sfseg.yaml_io import MAX_CONFIG_BYTES, brief, safe_yaml

LAYOUT = """\
  <root>/images/**/<name>.{png,jpg,jpeg}
  <root>/labels/**/<name>.png     (optional)"""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_mapping(path: str | Path, protocol: ClassProtocol) -> np.ndarray:
    """Read a mapping file into a raw id -> class index table (255 for ``ignore``; unlisted ids unknown)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"mapping file not found: {path}")
    try:
        table = safe_yaml(read_bytes(path, MAX_CONFIG_BYTES, what="mapping file").decode("utf-8"), str(path))
    except (ConfigError, RunDirError, UnicodeDecodeError, OSError) as e:
        raise DatasetError(f"cannot be read as a mapping file: {str(e)[:400]}") from None
    if not isinstance(table, dict) or not table:
        raise DatasetError(f"{path}: expected a mapping 'raw id: class name' (or 'ignore')")
    index = {n: i for i, n in enumerate(protocol.names)}
    lut = np.full(256, -1, dtype=np.int16)
    for raw, name in table.items():
        value = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
        if isinstance(raw, str) and raw.isdigit():
            value = int(raw)
        if value is None or not 0 <= value <= 255:
            raise DatasetError(f"{path}: key {brief(raw)} is not a label value (an integer 0..255)")
        if not isinstance(name, str) or (name != "ignore" and name not in index):
            raise DatasetError(
                f"{path}: {value}: {brief(name)} is not a class of {protocol.name}; use one of "
                f"{list(protocol.names)} or 'ignore'"
            )
        lut[value] = IGNORE_INDEX if name == "ignore" else index[name]
    return lut


@DATASETS.register("folder", protocol=CITYSCAPES19)
def folder(
    root: str | Path, split: str, protocol: ClassProtocol, labels: bool | str = True, mapping: str = ""
) -> FileListDataset:
    """Images under ``<root>/images/<split>`` (``split`` ``all``: the whole ``images/`` folder)."""
    root = Path(root)
    sub = "" if split == "all" else split
    img_dir, lab_dir = root / "images" / sub, root / "labels" / sub
    images = sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise layout_error(root, "image folder", f"no images under {img_dir.relative_to(root)}/", LAYOUT)
    if labels == "auto":
        labels = lab_dir.is_dir()
    samples = []
    for img in images:
        rel = img.relative_to(img_dir)
        samples.append(Sample(str(rel), img, lab_dir / rel.with_suffix(".png") if labels else None))
    codec = None
    if labels:
        missing = [s.label for s in samples if not s.label.is_file()]
        if missing:
            raise missing_error(
                "folder dataset", "label file(s) are", missing, "Each image needs labels/<same path>.png."
            )
        if mapping:
            lut = load_mapping(mapping, protocol)
            codec = lut_codec(
                lut.clip(0).astype(np.uint8), np.flatnonzero(lut >= 0), f"ids listed in {mapping}"
            )
        else:
            lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
            lut[: protocol.num_classes] = np.arange(protocol.num_classes)
            known = list(range(protocol.num_classes)) + [IGNORE_INDEX]
            codec = lut_codec(
                lut, known, f"class indices 0..{protocol.num_classes - 1} or 255 (no mapping file)"
            )
    return FileListDataset(samples, protocol, codec)
