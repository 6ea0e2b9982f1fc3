"""Datasets as list files: one generic list dataset plus per-benchmark layouts.

A list file has one sample per line: ``<image path> [<label path>]``, paths relative to the dataset root,
separated by whitespace, or by a tab when a file name holds spaces (a line with a tab is split on tabs
only). Blank lines and lines starting with ``#`` are skipped. Every path must stay inside the dataset
root: an absolute path or a ``..`` component is an error naming the list file and the line.

Images are read as uint8 RGB (8-bit files only: 16-bit and other deep images are refused, not flattened);
labels as uint8 trainIds where 255 means "ignore". Every label file is checked on load: a value that is
neither a class index nor 255 (typically an un-remapped label id) is an error naming the file, never
silently dropped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm

from sfseg import IGNORE_INDEX
from sfseg.data.classes import TOYCITY
from sfseg.errors import DatasetError, RunDirError
from sfseg.fileio import open_file, read_bytes

__all__ = ["DatasetError", "ListDataset", "check_toycity_root", "read_image", "read_label", "toycity_split"]

TOYCITY_LAYOUT = """\
  <root>/toycity.json
  <root>/{source,target}_{train,val}.txt
  <root>/{source,target}/images/{train,val}/00000.png ...
  <root>/{source,target}/labels/{train,val}/00000.png ...
Create it with:  sfseg toycity generate --out <root>"""


UNREADABLE_FIX = "re-extract or re-download it, or leave it out of the split"
MAX_LIST_BYTES = 64 * 2**20
"""The largest split list file sfseg reads (64 MiB: millions of names)."""


def _unreadable(path: Path, e: Exception) -> DatasetError:
    reason = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, UnidentifiedImageError):
        reason = "not an image file"
    return DatasetError(f"{path}: cannot be read as an image ({reason}); {UNREADABLE_FIX}")


MAX_IMAGE_PIXELS = 2**26
"""The most pixels an image may hold (67 megapixels, e.g. 8192 x 8192; Cityscapes frames hold 2.1):
checked from the file's header, before any pixel is decoded, so a file claiming 40000 x 40000 is refused
without allocating its memory."""
MAX_IMAGE_BYTES = 2**30
"""The largest image or label file sfseg reads (1 GiB)."""


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """Pillow's lazy ``Image.open`` of a regular file (a FIFO or device is refused at once, never read
    from), with the size from the header checked against :data:`MAX_IMAGE_PIXELS` before any decoding.
    Every failure is a :class:`DatasetError` naming the file."""
    path = Path(path)
    try:
        with open_file(path, "rb") as f:
            head = f.read(24)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":  # before Pillow's own check
                _check_pixels(path, int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
            f.seek(0)
            with Image.open(f) as im:
                _check_pixels(path, *im.size)
                yield im
    except (DatasetError, RunDirError) as e:
        raise DatasetError(str(e)) from None
    except Image.DecompressionBombError:
        raise DatasetError(
            f"{path}: its header claims more pixels than sfseg reads ({MAX_IMAGE_PIXELS:,}); a damaged or "
            "hostile file?"
        ) from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise _unreadable(path, e) from None


def _check_pixels(path: Path, w: int, h: int) -> None:
    if w * h > MAX_IMAGE_PIXELS:
        raise DatasetError(
            f"{path}: its header claims {w}x{h} pixels, more than sfseg reads ({MAX_IMAGE_PIXELS:,} pixels); "
            "a damaged or hostile file? Resize real images of that size first"
        )


IMAGE_MODES = ("L", "P", "RGB", "RGBA", "LA", "PA")
"""Pillow modes of 8-bit images; an alpha channel is dropped (images are composited on nothing)."""


def check_image_mode(im: Image.Image, path: Path) -> None:
    """Refuse images that are not 8 bits per channel (a 16-bit image converted to RGB by Pillow is
    clipped to one colour; a 16-bit RGB PNG is silently truncated to 8 bits)."""
    deep = im.format == "PNG" and png_depth(path) == 16
    if im.mode not in IMAGE_MODES or deep:
        what = "16 bits per channel" if deep else f"mode {im.mode!r}"
        raise DatasetError(
            f"{path}: image has {what}; sfseg reads 8-bit images only (grey, palette, RGB or RGBA). "
            "Convert it to 8-bit RGB (e.g. PNG or JPEG)"
        )


def png_depth(path: Path) -> int:
    """The bit depth in a PNG's header (8 for a file too short to tell)."""
    try:
        with open_file(path, "rb") as f:
            head = f.read(26)
    except RunDirError as e:
        raise DatasetError(str(e)) from None
    return head[24] if len(head) == 26 and head[12:16] == b"IHDR" else 8


def read_image(path: Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB; an unreadable, truncated, non-image, not-8-bit, oversized or
    non-regular file is a :class:`DatasetError` naming it."""
    with open_image(path) as im:
        check_image_mode(im, Path(path))
        return np.asarray(im.convert("RGB"))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding pixels; a not-8-bit image is refused."""
    with open_image(path) as im:
        check_image_mode(im, Path(path))
        return im.size


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
    try:
        text = read_bytes(list_file, MAX_LIST_BYTES, what="list file").decode("utf-8")
    except RunDirError as e:
        raise DatasetError(str(e)) from None
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"{list_file}: not UTF-8 text (byte {e.start}); save the list file as UTF-8"
        ) from None
    except OSError as e:
        raise DatasetError(f"{list_file}: cannot be read ({e.strerror})") from None
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


def read_label(path: Path, num_classes: int) -> np.ndarray:
    """Read a trainId label PNG (grayscale or palette; the stored index is the id) and validate it."""
    with open_image(path) as im:
        if im.mode not in ("L", "P"):
            raise DatasetError(
                f"{path}: label PNG has mode {im.mode!r}; expected 8-bit trainIds (mode L or P)"
            )
        try:
            label = np.asarray(im)
        except (OSError, SyntaxError, ValueError) as e:
            raise _unreadable(Path(path), e) from None
    counts = np.bincount(label.ravel(), minlength=256)
    bad = [int(v) for v in np.flatnonzero(counts) if v >= num_classes and v != IGNORE_INDEX]
    if bad:
        raise DatasetError(
            f"{path}: label values {bad} are neither class indices 0..{num_classes - 1} nor {IGNORE_INDEX} "
            "(ignore). Un-remapped label ids? Convert labels to trainIds first."
        )
    return label


class ListDataset(Dataset):
    """Samples named by a list file, loaded into memory once (small benchmarks).

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
) -> ListDataset:
    """One ToyCity split (``domain`` in source/target, ``split`` in train/val)."""
    root = check_toycity_root(root)
    return ListDataset(
        root, root / f"{domain}_{split}.txt", TOYCITY.num_classes, labels=labels, progress=progress
    )
