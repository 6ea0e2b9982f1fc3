"""A user's own domain: a folder of images, in one of two layouts.

Plain (no ``images/`` folder at its top): every image anywhere under the root, in any nesting, with no
splits and no labels. This is what source-free adaptation is for: ``data.dataset=folder data.root=<it>``
adapts to it (every image is a training image) and each round is scored by a label-free validator::

    <root>/**/<name>.{png,jpg,jpeg}

With labels (for scoring, or for the pseudo-label diagnostics)::

    <root>/images/[<split>/]**/<name>.{png,jpg,jpeg}
    <root>/labels/[<split>/]**/<name>.png     (optional; same relative path and stem as the image)

A split is a subfolder of ``images/`` (``all``: the whole folder); a tree without split subfolders serves
every split name. Without a mapping file the labels must already hold class indices of the protocol (255 =
ignore). With one (YAML or JSON, ``raw id: class name`` or ``raw id: ignore``), every raw value a label may
hold is listed; any other value is an error naming the file. The class protocol defaults to the model's own
classes (:func:`sfseg.data.registry.dataset_protocol`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sfseg.constants import IGNORE_INDEX
from sfseg.data.classes import ClassProtocol
from sfseg.data.file_dataset import FileListDataset, Sample, layout_error, lut_codec, missing_error
from sfseg.errors import ConfigError, DatasetError
from sfseg.fileio import read_text
from sfseg.registry import DATASETS
from sfseg.yaml_io import MAX_CONFIG_BYTES, brief, safe_yaml

LAYOUT = """\
  <root>/**/<name>.{png,jpg,jpeg}            a plain folder: every image, no labels
or, with labels:
  <root>/images/[<split>/]**/<name>.{png,jpg,jpeg}
  <root>/labels/[<split>/]**/<name>.png     (same relative path and stem as its image)"""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_mapping(path: str | Path, protocol: ClassProtocol) -> np.ndarray:
    """Read a mapping file into a raw id -> class index table (255 for ``ignore``; unlisted ids unknown)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"mapping file not found: {path}")
    try:
        table = safe_yaml(read_text(path, MAX_CONFIG_BYTES, "mapping file", ConfigError), str(path))
    except ConfigError as e:
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


def _images(folder: Path) -> list[Path]:
    """The images under ``folder``, sorted, hidden files and folders (``.name``) left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and not p.is_dir()
    )


SPLIT_NAMES = ("train", "val", "test")


def _split_folder(root: Path, split: str) -> Path:
    """The image folder of ``split`` in the images/ + labels/ layout: ``images/<split>``, or all of
    ``images/`` for ``all`` and for a tree without split folders (train, val or test)."""
    images = root / "images"
    if split == "all" or (images / split).is_dir():
        return images / ("" if split == "all" else split)
    splits = sorted(n for n in SPLIT_NAMES if (images / n).is_dir())
    if splits:
        raise DatasetError(
            f"{root}: no split {split!r} under images/ (splits there: {splits}); set data.train_split / "
            "data.val_split (or --split) to one of them, or 'all' for every image"
        )
    return images


@DATASETS.register("folder", protocol=None)
def folder(
    root: str | Path, split: str, protocol: ClassProtocol, labels: bool | str = "auto", mapping: str = ""
) -> FileListDataset:
    """The images of ``split`` (see the module docstring), with labels when ``labels`` is True (required),
    ``"auto"`` (where the tree has them) or False."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root} (data.root / --data names a folder of images)")
    plain = not (root / "images").is_dir()
    img_dir = root if plain else _split_folder(root, split)
    lab_dir = root / "labels" / img_dir.relative_to(root / "images") if not plain else None
    images = _images(img_dir)
    if not images:
        where = f"{img_dir.relative_to(root)}/" if img_dir != root else "it"
        raise layout_error(root, "image folder", f"no .png/.jpg/.jpeg images under {where}", LAYOUT)
    if labels == "auto":
        labels = lab_dir is not None and lab_dir.is_dir()
    if labels and plain:
        raise DatasetError(
            f"{root} is a plain folder of images, without labels; to score against labels, lay it out as "
            f"images/ + labels/:\n{LAYOUT}"
        )
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
    elif mapping:
        raise ConfigError(
            f"a mapping file ({mapping}) is for labels, and {root} has none for split {split!r}"
        )
    return FileListDataset(samples, protocol, codec)
