"""The generic dataset under every real benchmark: a list of image (and label) files, read lazily, labels
decoded and remapped; and the split list files that name them.

A benchmark module (``cityscapes``, ``gta5``, ``synthia``, ``folder``) only finds its files and says how
its label files encode classes (a :class:`LabelCodec`); this module reads, remaps and validates them the
same way for all. A raw label value that the codec does not know is an error naming the file: an
un-remapped or wrongly decoded label must never be silently dropped.

A list file has one sample per line: ``<image path> [<label path>]``, paths relative to the dataset root,
separated by whitespace, or by a tab when a file name holds spaces (a line with a tab is split on tabs
only). Blank lines and lines starting with ``#`` are skipped. Every path must stay inside the dataset
root: an absolute path or a ``..`` component is an error naming the list file and the line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from sfseg.data.classes import ClassProtocol
from sfseg.data.images import header_size, read_image, read_pil_ids
from sfseg.errors import DatasetError
from sfseg.fileio import read_text


@dataclass(frozen=True)
class LabelCodec:
    """How one benchmark's label files encode classes.

    Args:
        read: reads a label file into raw ids (H, W), integer dtype.
        lut: raw id -> class index of the protocol (255 = ignore); its length bounds the raw ids.
        known: raw ids that may appear (others are an error), same length as ``lut``.
        what: a short description for error messages, e.g. ``"Cityscapes labelIds"``.
    """

    read: Callable[[Path], np.ndarray]
    lut: np.ndarray
    known: np.ndarray
    what: str

    def decode(self, path: Path) -> np.ndarray:
        """Read ``path`` and map it to class indices (uint8, 255 = ignore)."""
        raw = self.read(path)
        if raw.dtype == np.uint8 and len(self.lut) <= 256:
            # 8-bit ids: OpenCV's histogram and lookup table, ~10x NumPy's bincount and fancy indexing.
            lut, known = self._tables256()
            present = np.flatnonzero(cv2.calcHist([raw], [0], None, [256], [0, 256]).ravel())
            unknown = [int(v) for v in present if not known[v]]
            if unknown:
                raise DatasetError(
                    f"{path}: values {unknown} are not {self.what}; is this the right label file?"
                )
            return cv2.LUT(raw, lut)
        if raw.max(initial=0) >= len(self.lut):
            raise DatasetError(f"{path}: value {int(raw.max())} is not a valid {self.what} value")
        present = np.flatnonzero(np.bincount(raw.ravel(), minlength=len(self.lut)))
        unknown = [int(v) for v in present if not self.known[v]]
        if unknown:
            raise DatasetError(f"{path}: values {unknown} are not {self.what}; is this the right label file?")
        return self.lut[raw]

    def _tables256(self) -> tuple[np.ndarray, np.ndarray]:
        """``lut`` and ``known`` padded to 256 entries (ids beyond the table are unknown)."""
        lut = np.full(256, 255, dtype=np.uint8)
        lut[: len(self.lut)] = self.lut
        known = np.zeros(256, dtype=bool)
        known[: len(self.known)] = self.known
        return lut, known


def lut_codec(id_to_class: np.ndarray, known_ids, what: str, read=read_pil_ids) -> LabelCodec:
    known = np.zeros(len(id_to_class), dtype=bool)
    known[list(known_ids)] = True
    return LabelCodec(read, id_to_class, known, what)


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    label: Path | None = None


class FileListDataset(Dataset):
    """Images and labels read from disk on demand.

    Args:
        samples: the files, in dataset order.
        protocol: the class protocol the labels are mapped to.
        codec: how the label files are decoded; None for an unlabelled split.
        repair_size: resize a label that differs in size from its image to the image (nearest neighbour);
            otherwise such a pair is an error.
        check_headers: read every image's file header now (and its label's), cheap: no pixels are
            decoded; refuse unreadable files, images that are not 8-bit and size mismatches, all listed in
            one error. Pixel-level problems
            (truncated data, unknown label values) are found at first read, or up front by
            ``sfseg check-data``.

    Items are dicts with ``image`` (3, H, W) uint8 RGB at the file's resolution, ``index`` and, when the
    split has labels, ``label`` (H, W) uint8 class indices (255 = ignore).
    """

    def __init__(
        self,
        samples: list[Sample],
        protocol: ClassProtocol,
        codec: LabelCodec | None,
        repair_size: bool = False,
        check_headers: bool = True,
    ):
        self.samples = samples
        self.protocol = protocol
        self.codec = codec
        self.repair_size = repair_size
        self.names = [s.name for s in samples]
        self.has_labels = codec is not None and all(s.label is not None for s in samples)
        self.image_sizes: list[tuple[int, int]] | None = None  # (W, H) per image, from the headers
        if check_headers:
            problems, sizes = [], []
            pairs = self.has_labels and not repair_size
            for s in samples:
                try:
                    a = header_size(s.image, image=True)
                    sizes.append(a)
                    b = header_size(s.label) if pairs else a
                    if a != b:
                        problems.append(
                            f"{s.label}: label is {b[0]}x{b[1]} but its image {s.image} is {a[0]}x{a[1]}"
                        )
                except DatasetError as e:
                    problems.append(str(e))
            if problems:
                raise problems_error(f"{samples[0].image.parent}", problems)
            self.image_sizes = sizes

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` alone (3, H, W) uint8, without reading its label."""
        return torch.from_numpy(read_image(self.samples[i].image).copy()).permute(2, 0, 1)

    def label(self, i: int) -> torch.Tensor:
        """Label ``i`` alone (H, W) uint8, at its image's size, without decoding the image."""
        s = self.samples[i]
        label = self.codec.decode(s.label)
        w, h = header_size(s.image)
        return torch.from_numpy(np.require(self._fit(s, label, (h, w)), np.uint8, ["C", "W"]))

    def _fit(self, s: Sample, label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        if label.shape == hw:
            return label
        if not self.repair_size:
            raise DatasetError(
                f"{s.label}: label is {label.shape[1]}x{label.shape[0]} but its image {s.image} is "
                f"{hw[1]}x{hw[0]}"
            )
        return np.asarray(Image.fromarray(label).resize((hw[1], hw[0]), Image.NEAREST))

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        image = read_image(s.image)
        item = {"image": torch.from_numpy(image.copy()).permute(2, 0, 1), "index": i}
        if self.has_labels:
            label = self._fit(s, self.codec.decode(s.label), image.shape[:2])
            item["label"] = torch.from_numpy(np.require(label, np.uint8, ["C", "W"]))
        return item


def listing(root: Path, depth: int = 2, limit: int = 12) -> str:
    """A short listing of what is under ``root`` (for layout errors)."""
    if not root.is_dir():
        return f"{root} does not exist"
    found = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if len(rel.parts) <= depth:
            found.append(f"{rel}{'/' if p.is_dir() else ''}")
        if len(found) >= limit:
            found.append("...")
            break
    return ", ".join(found) if found else "(empty)"


def layout_error(root: Path, dataset: str, problem: str, layout: str) -> DatasetError:
    return DatasetError(
        f"{root} is not a {dataset} tree: {problem}\nFound: {listing(root)}\nExpected layout:\n{layout}"
    )


def missing_error(dataset: str, what: str, paths: list[Path], fix: str) -> DatasetError:
    shown = "\n  ".join(str(p) for p in paths[:10])
    more = f"\n  ... and {len(paths) - 10} more" if len(paths) > 10 else ""
    return DatasetError(f"{dataset}: {len(paths)} {what} missing:\n  {shown}{more}\n{fix}")


MAX_LIST_BYTES = 64 * 2**20
"""The largest split list file sfseg reads (64 MiB: millions of names)."""


def list_entries(list_file: Path, columns: int = 2) -> list[tuple[int, list[str]]]:
    """``(line number, paths)`` of each sample line of a list file (see the module docstring).

    Args:
        columns: the most paths a line may hold (1: one name per line, where the whole line, spaces
            included, is the name).

    Raises:
        DatasetError: the file is missing, unreadable or not UTF-8, a line holds too many paths, or a path
            leaves the dataset root (absolute, or with a ``..`` component).
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DatasetError(f"list file not found: {list_file}")
    text = read_text(list_file, MAX_LIST_BYTES, "list file", DatasetError)
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if columns == 1:
            fields = [line]
        else:
            fields = line.split("\t") if "\t" in line else line.split()
            fields = [f.strip() for f in fields if f.strip()]
        if len(fields) > columns:
            raise DatasetError(
                f"{list_file}, line {number}: {len(fields)} paths where at most {columns} are expected; "
                "separate image and label by a tab when a file name holds spaces"
            )
        for f in fields:
            check_relative(f, f"{list_file}, line {number}")
        out.append((number, fields))
    return out


def check_relative(entry: str, where: str) -> str:
    """``entry`` if it is a relative path that stays inside its root; an error naming ``where`` otherwise."""
    p = Path(entry)
    if p.is_absolute() or entry.startswith(("/", "\\")) or ".." in p.parts or "\0" in entry:
        raise DatasetError(
            f"{where}: {entry!r} leaves the dataset root (absolute paths and '..' are not allowed); "
            "name files relative to the root"
        )
    return entry


def check_one_size(dataset: Dataset, where: str, fix: str) -> None:
    """Refuse a split whose images differ in size (when its ``image_sizes`` are known): batches of them
    cannot be stacked. ``fix`` says which setting lifts the restriction."""
    sizes = getattr(dataset, "image_sizes", None)
    if not sizes or len(set(sizes)) == 1:
        return
    groups: dict[tuple[int, int], list[int]] = {}
    for i, wh in enumerate(sizes):
        groups.setdefault(wh, []).append(i)
    names = getattr(dataset, "names", None)
    shown = "; ".join(
        f"{w}x{h}: {len(ix)} image(s), e.g. {names[ix[0]] if names else ix[0]}"
        for (w, h), ix in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:4]
    )
    raise DatasetError(f"{where}: images of different sizes ({shown}); {fix}")


def problems_error(where: str, problems: list[str], limit: int = 20) -> DatasetError:
    """One error listing every bad file found in ``where``."""
    shown = "\n  ".join(problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return DatasetError(f"{where}: {len(problems)} bad file(s):\n  {shown}{more}")


def read_list_file(path: str | Path) -> list[str]:
    """Names from a split list file: one per line, the whole line (spaces included) is the name; blank
    lines and ``#`` comments skipped; a name that leaves the dataset folder is an error naming the line."""
    return [fields[0] for _, fields in list_entries(Path(path), columns=1)]


def paired_files(
    root: Path,
    dataset: str,
    layout: str,
    img_dir: Path,
    lab_dir: Path,
    split: str,
    labels: bool | str,
    fix: str,
) -> tuple[list[str], bool]:
    """The names of a flat image folder and its label folder (same file names), checked up front.

    ``split`` is ``all`` (every PNG in either folder) or a list file of names; ``labels`` may be
    ``"auto"`` (read labels when ``lab_dir`` exists). A missing folder is a layout error; a name without
    its image or its label is listed in one error with ``fix``.

    Returns:
        the names and whether labels are read.
    """
    if not img_dir.is_dir():
        raise layout_error(root, dataset, f"no {img_dir.relative_to(root)}/ directory", layout)
    if labels == "auto":
        labels = lab_dir.is_dir()
    if labels and not lab_dir.is_dir():
        raise layout_error(root, dataset, f"no {lab_dir.relative_to(root)}/ directory", layout)
    if split == "all":
        names = {p.name for p in img_dir.glob("*.png")}
        if labels:
            names |= {p.name for p in lab_dir.glob("*.png")}
        names = sorted(names)
    else:
        names = read_list_file(split)
    if not names:
        raise layout_error(root, dataset, f"no PNG files in {img_dir.relative_to(root)}/", layout)
    missing = [img_dir / n for n in names if not (img_dir / n).is_file()]
    if labels:
        missing += [lab_dir / n for n in names if not (lab_dir / n).is_file()]
    if missing:
        raise missing_error(dataset, "file(s) named by the split are", sorted(missing), fix)
    return names, bool(labels)
