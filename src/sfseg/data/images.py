"""Reading image and label files without trusting them: regular files only (a FIFO is refused, never
read from), sizes checked from the header before any pixel is decoded (:data:`MAX_IMAGE_PIXELS`), 8-bit
images only (16-bit and other deep images are refused, not flattened), and labels decoded without colour
conversion. Every failure is a :class:`~sfseg.errors.DatasetError` naming the file."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sfseg.constants import IGNORE_INDEX
from sfseg.errors import DatasetError, RunDirError
from sfseg.fileio import open_file

UNREADABLE_FIX = "re-extract or re-download it, or leave it out of the split"


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


def png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk, without decoding pixels."""
    try:
        with open_file(path, "rb") as f:
            head = f.read(26)
    except RunDirError as e:
        raise DatasetError(str(e)) from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read ({e.strerror})") from None
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise DatasetError(f"{path}: not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    if width * height > MAX_IMAGE_PIXELS:
        raise DatasetError(
            f"{path}: its header claims {width}x{height} pixels, more than sfseg reads ({MAX_IMAGE_PIXELS:,} "
            "pixels); a damaged or hostile file? Resize real images of that size first"
        )
    return width, height, head[24], head[25]


def header_size(path: Path, image: bool = False) -> tuple[int, int]:
    """(width, height) of an image file from its header (PNG: the IHDR chunk; others: Pillow's lazy open).

    Args:
        image: the file is an input image, which must have 8 bits per channel (label files may be 16-bit:
            SYNTHIA's are).
    """
    if path.suffix.lower() == ".png":
        try:
            w, h, depth, _ = png_header(path)
        except (OSError, struct.error):
            return image_size(path)  # Pillow's error names the file
        if image and depth > 8:
            return image_size(path)  # refused there, with the reason
        return w, h
    return image_size(path)


def read_pil_ids(path: Path) -> np.ndarray:
    """Read an 8-bit id PNG (grayscale, or palette whose *index* is the id) without colour conversion.

    16-bit PNGs are refused: Pillow opens 16-bit-per-channel colour PNGs as 8-bit and destroys the ids.
    """
    if path.suffix.lower() == ".png":
        _, _, depth, _ = png_header(path)
        if depth > 8:
            raise DatasetError(
                f"{path}: {depth}-bit PNG; Pillow would decode it wrongly. SYNTHIA labels must be read with "
                "dataset 'synthia' (OpenCV decoding)."
            )
    with open_image(path) as im:
        if im.mode not in ("L", "P"):
            raise DatasetError(f"{path}: label image has mode {im.mode!r}; expected 8-bit ids (mode L or P)")
        try:
            return np.asarray(im)
        except (OSError, SyntaxError, ValueError) as e:
            reason = " ".join(str(e).split())
            raise DatasetError(
                f"{path}: cannot be read as a label image ({reason}); {UNREADABLE_FIX}"
            ) from None


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
