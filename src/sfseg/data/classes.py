"""Class protocols: names, colours and the majority/minority split used for reporting.

A protocol is the auditable contract between a dataset's label files and a model's output channels:
index ``i`` of a model's logits is ``protocol.names[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sfseg.constants import IGNORE_INDEX
from sfseg.errors import ConfigError

# Cityscapes trainId colours, keyed by class name (cityscapesscripts.helpers.labels).
CITYSCAPES_COLORS: dict[str, tuple[int, int, int]] = {
    "road": (128, 64, 128),
    "sidewalk": (244, 35, 232),
    "building": (70, 70, 70),
    "wall": (102, 102, 156),
    "fence": (190, 153, 153),
    "pole": (153, 153, 153),
    "traffic light": (250, 170, 30),
    "traffic sign": (220, 220, 0),
    "vegetation": (107, 142, 35),
    "terrain": (152, 251, 152),
    "sky": (70, 130, 180),
    "person": (220, 20, 60),
    "rider": (255, 0, 0),
    "car": (0, 0, 142),
    "truck": (0, 0, 70),
    "bus": (0, 60, 100),
    "train": (0, 80, 100),
    "motorcycle": (0, 0, 230),
    "bicycle": (119, 11, 32),
}

# The classes the paper calls majority ("winner") classes; every other class counts as minority.
MAJORITY_CLASSES = ("road", "building", "vegetation", "sky", "car")


@dataclass(frozen=True)
class ClassProtocol:
    """An ordered set of classes.

    Args:
        name: identifier of the protocol (e.g. ``"toycity12"``).
        names: class names; position = trainId = output channel.
        subsets: extra scores computed from the same confusion matrix, as ``(score name, class names)``;
            e.g. SYNTHIA's 13-class mIoU is the mean of 13 of the 16 per-class IoUs.
    """

    name: str
    names: tuple[str, ...]
    subsets: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        """One RGB colour per class: Cityscapes' own for its class names, a fixed distinct one otherwise."""
        return [CITYSCAPES_COLORS.get(n) or _spare_color(i) for i, n in enumerate(self.names)]

    @property
    def majority(self) -> list[int]:
        return [i for i, n in enumerate(self.names) if n in MAJORITY_CLASSES]

    @property
    def minority(self) -> list[int]:
        return [i for i, n in enumerate(self.names) if n not in MAJORITY_CLASSES]

    def label_ids(self) -> list[int]:
        """The Cityscapes labelId of every class (for exporting predictions to the official format)."""
        return [CITYSCAPES_NAME_TO_LABEL_ID[n] for n in self.names]

    def palette(self) -> list[int]:
        """A flat 768-entry PIL palette (unused entries and 255 are black)."""
        flat = [c for rgb in self.colors for c in rgb]
        return flat + [0] * (768 - len(flat))


# Cityscapes label table: (name, labelId, trainId) for labelIds 0..33; trainId 255 = not evaluated.
# A test checks it against cityscapesscripts.helpers.labels.
CITYSCAPES_LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, 255),
    ("ego vehicle", 1, 255),
    ("rectification border", 2, 255),
    ("out of roi", 3, 255),
    ("static", 4, 255),
    ("dynamic", 5, 255),
    ("ground", 6, 255),
    ("road", 7, 0),
    ("sidewalk", 8, 1),
    ("parking", 9, 255),
    ("rail track", 10, 255),
    ("building", 11, 2),
    ("wall", 12, 3),
    ("fence", 13, 4),
    ("guard rail", 14, 255),
    ("bridge", 15, 255),
    ("tunnel", 16, 255),
    ("pole", 17, 5),
    ("polegroup", 18, 255),
    ("traffic light", 19, 6),
    ("traffic sign", 20, 7),
    ("vegetation", 21, 8),
    ("terrain", 22, 9),
    ("sky", 23, 10),
    ("person", 24, 11),
    ("rider", 25, 12),
    ("car", 26, 13),
    ("truck", 27, 14),
    ("bus", 28, 15),
    ("caravan", 29, 255),
    ("trailer", 30, 255),
    ("train", 31, 16),
    ("motorcycle", 32, 17),
    ("bicycle", 33, 18),
)
CITYSCAPES_NAME_TO_LABEL_ID = {name: lid for name, lid, tid in CITYSCAPES_LABELS if tid != 255}

# SYNTHIA-RAND-CITYSCAPES raw class ids (first channel of its 16-bit label PNGs), named as in Cityscapes.
SYNTHIA_IDS: dict[int, str] = {
    0: "void",
    1: "sky",
    2: "building",
    3: "road",
    4: "sidewalk",
    5: "fence",
    6: "vegetation",
    7: "pole",
    8: "car",
    9: "traffic sign",
    10: "person",  # SYNTHIA: pedestrian
    11: "bicycle",
    12: "motorcycle",
    13: "parking-slot",
    14: "road-work",
    15: "traffic light",
    16: "terrain",
    17: "rider",
    18: "truck",
    19: "bus",
    20: "train",
    21: "wall",
    22: "lanemarking",
}

CITYSCAPES19 = ClassProtocol("cityscapes19", tuple(CITYSCAPES_COLORS))

# The SYNTHIA->Cityscapes protocol: Cityscapes' 19 classes minus terrain, truck and train. Its 13-class
# score drops wall, fence and pole from the same 16 per-class IoUs (never "mIoU19 * 19/16").
SYNTHIA16 = ClassProtocol(
    "synthia16",
    tuple(n for n in CITYSCAPES_COLORS if n not in ("terrain", "truck", "train")),
    subsets=(
        (
            "miou13",
            tuple(
                n
                for n in CITYSCAPES_COLORS
                if n not in ("terrain", "truck", "train", "wall", "fence", "pole")
            ),
        ),
    ),
)

TOYCITY = ClassProtocol(
    "toycity12",
    (
        "road",
        "sidewalk",
        "building",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "car",
    ),
)

PROTOCOLS = {p.name: p for p in (CITYSCAPES19, SYNTHIA16, TOYCITY)}


def id_lut(id_to_name: dict[int, str], protocol: ClassProtocol, size: int = 256) -> np.ndarray:
    """A lookup table raw id -> class index of ``protocol`` (255 for every id whose class it lacks).

    Shape:
        (size,) uint8.
    """
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    index = {n: i for i, n in enumerate(protocol.names)}
    for raw, name in id_to_name.items():
        if name in index:
            lut[raw] = index[name]
    return lut


def cityscapes_lut(protocol: ClassProtocol) -> np.ndarray:
    """labelId -> class index of ``protocol`` (Cityscapes and GTA5 labels)."""
    return id_lut({lid: n for n, lid, tid in CITYSCAPES_LABELS if tid != 255}, protocol)


def _spare_color(i: int) -> tuple[int, int, int]:
    """A colour for class ``i`` of a protocol whose names Cityscapes lacks (golden-angle hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
    return int(255 * r), int(255 * g), int(255 * b)


def protocol_of(names: list[str] | tuple[str, ...]) -> ClassProtocol:
    """The protocol of a model's classes: a known protocol with exactly these names, in this order, or a
    new one named ``classes<N>`` (reports then count every class outside Cityscapes' majority as minority)."""
    names = tuple(names)
    known = next((p for p in PROTOCOLS.values() if p.names == names), None)
    return known or ClassProtocol(f"classes{len(names)}", names)


def get_protocol(name: str) -> ClassProtocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown class protocol {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]
