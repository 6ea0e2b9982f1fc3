"""Class protocols: names, colours and the majority/minority split used for reporting.

A protocol is the auditable contract between a dataset's label files and a model's output channels:
index ``i`` of a model's logits is ``protocol.names[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    name: str
    names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        return [CITYSCAPES_COLORS[n] for n in self.names]

    @property
    def majority(self) -> list[int]:
        return [i for i, n in enumerate(self.names) if n in MAJORITY_CLASSES]

    @property
    def minority(self) -> list[int]:
        return [i for i, n in enumerate(self.names) if n not in MAJORITY_CLASSES]

    def palette(self) -> list[int]:
        """A flat 768-entry PIL palette (unused entries and 255 are black)."""
        flat = [c for rgb in self.colors for c in rgb]
        return flat + [0] * (768 - len(flat))


CITYSCAPES19 = ClassProtocol("cityscapes19", tuple(CITYSCAPES_COLORS))

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

PROTOCOLS = {p.name: p for p in (CITYSCAPES19, TOYCITY)}


def get_protocol(name: str) -> ClassProtocol:
    if name not in PROTOCOLS:
        raise KeyError(f"unknown class protocol {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]
