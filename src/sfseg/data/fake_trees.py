"""Tiny fake copies of the real benchmarks, with the real names and encodings, for tests and smoke runs.

Nothing here resembles the real images: pixels are random. What is exact is what loaders depend on — paths,
file names, PNG encodings (Cityscapes 8-bit labelIds, GTA5 palette PNGs, SYNTHIA 16-bit 3-channel PNGs).
Each writer returns the raw ids it wrote, so a test can check decoding pixel for pixel.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from sfseg.data.classes import CITYSCAPES_LABELS, SYNTHIA_IDS

CITY_LABEL_IDS = np.array([lid for _, lid, _ in CITYSCAPES_LABELS])


def _rgb(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _blocky_ids(rng: np.random.Generator, ids: np.ndarray, w: int, h: int, block: int = 8) -> np.ndarray:
    """Random ids in ``block`` x ``block`` tiles (a little spatial structure for smoke runs)."""
    small = rng.choice(ids, size=(-(-h // block), -(-w // block)))
    return np.kron(small, np.ones((block, block), dtype=small.dtype))[:h, :w].astype(np.uint8)


def write_cityscapes(
    root: str | Path, splits=("train", "val"), per_split: int = 3, size=(64, 32), seed: int = 0
) -> dict[str, np.ndarray]:
    """A Cityscapes tree; returns {label path: labelIds written}."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    written = {}
    w, h = size
    for split in splits:
        for i in range(per_split):
            city = (
                ("frankfurt", "lindau", "munster")[i % 3] if split == "val" else ("aachen", "bochum")[i % 2]
            )
            stem = f"{city}_{i:06d}_{19 + i:06d}"
            img = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            lab = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            lab.parent.mkdir(parents=True, exist_ok=True)
            _rgb(rng, w, h).save(img)
            ids = _blocky_ids(rng, CITY_LABEL_IDS, w, h)
            Image.fromarray(ids, mode="L").save(lab)
            written[str(lab)] = ids
    return written


def write_gta5(
    root: str | Path, n: int = 4, size=(64, 36), mismatched: tuple[int, ...] = (), seed: int = 0
) -> dict[str, np.ndarray]:
    """A GTA5 tree with palette label PNGs (index = labelId); pairs in ``mismatched`` get a label of a
    different size (1-based ids). Returns {label path: labelIds written}."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    palette = rng.integers(0, 256, 768, dtype=np.uint8).tolist()
    written = {}
    w, h = size
    for i in range(1, n + 1):
        _rgb(rng, w, h).save(root / "images" / f"{i:05d}.png")
        lw, lh = (w + 6, h + 4) if i in mismatched else (w, h)
        ids = _blocky_ids(rng, CITY_LABEL_IDS, lw, lh)
        im = Image.fromarray(ids, mode="P")
        im.putpalette(palette)
        path = root / "labels" / f"{i:05d}.png"
        im.save(path)
        written[str(path)] = ids
    return written


def write_synthia(root: str | Path, n: int = 3, size=(64, 38), seed: int = 0) -> dict[str, np.ndarray]:
    """A SYNTHIA-RAND-CITYSCAPES tree with 16-bit 3-channel label PNGs (class id in the first channel,
    instance-like values up to 65535 in the others). Returns {label path: class ids written}."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "RGB").mkdir(parents=True, exist_ok=True)
    (root / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
    written = {}
    w, h = size
    for i in range(n):
        name = f"{i:07d}.png"
        _rgb(rng, w, h).save(root / "RGB" / name)
        ids = _blocky_ids(rng, np.array(sorted(SYNTHIA_IDS)), w, h)
        rgb16 = np.stack([ids, rng.integers(0, 65536, (h, w)), rng.integers(0, 65536, (h, w))], -1)
        path = root / "GT" / "LABELS" / name
        cv2.imwrite(str(path), rgb16[:, :, ::-1].astype(np.uint16))  # OpenCV writes BGR
        written[str(path)] = ids
    return written
