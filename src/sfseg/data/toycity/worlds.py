"""The ToyCity worlds: each variant's layout statistics and appearance per domain, and the spec of a
world (generator seed, image size, split sizes). One image of a world is a pure function of
(seed, domain, split, index)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from sfseg.data.toycity.render import AppearanceStyle, render
from sfseg.data.toycity.scene import LayoutStyle, generate_scene
from sfseg.errors import ConfigError

GENERATOR_VERSION = 2

DOMAINS = ("source", "target")

SPLITS = ("train", "val")

SIM_LAYOUT = LayoutStyle(
    horizon=(0.38, 0.5),
    road_half_width=(0.3, 0.42),
    sidewalk_width=(0.12, 0.2),
    building_height=(0.3, 0.9),
    building_gap_p=0.15,
    trees=(0, 3),
    tree_radius=(0.06, 0.14),
    terrain_p=0.35,
    fence_p=0.25,
    poles=(1, 4),
    pole_height=0.55,
    sign_p=0.5,
    light_p=0.5,
    cars=(1, 4),
    car_width=0.3,
    persons=(1, 4),
    person_height=0.4,
)

PHOTO_LAYOUT = LayoutStyle(
    horizon=(0.32, 0.45),
    road_half_width=(0.25, 0.38),
    sidewalk_width=(0.1, 0.2),
    building_height=(0.4, 0.95),
    building_gap_p=0.1,
    trees=(1, 5),
    tree_radius=(0.08, 0.18),
    terrain_p=0.25,
    fence_p=0.4,
    poles=(2, 5),
    pole_height=0.6,
    sign_p=0.4,
    light_p=0.5,
    cars=(2, 6),
    car_width=0.36,
    persons=(2, 5),
    person_height=0.27,
)

SIM_LOOK = AppearanceStyle(
    palette={
        "road": ((95, 95, 100),),
        "sidewalk": ((175, 165, 170), (160, 160, 150)),
        "building": ((185, 175, 150), (150, 150, 165), (205, 195, 175), (165, 140, 120)),
        "fence": ((150, 115, 80),),
        "pole": ((135, 135, 140),),
        "traffic light": ((35, 35, 35),),
        "traffic sign": ((30, 90, 210), (230, 200, 30)),
        "vegetation": ((60, 150, 55), (80, 160, 60)),
        "terrain": ((150, 200, 95),),
        "sky": ((105, 165, 235),),
        "person": ((200, 40, 40), (40, 60, 200), (230, 200, 40), (40, 160, 60), (240, 240, 240)),
        "car": ((210, 30, 30), (30, 60, 200), (240, 210, 30), (30, 150, 60), (235, 235, 235), (120, 40, 160)),
    },
    jitter=6.0,
    texture=0.5,
    window=(90, 120, 150),
    exposure=(0.9, 1.1),
    cast=0.02,
    shadow_p=0.2,
    blur=(0.0, 0.5),
    noise=(1.0, 4.0),
)

PHOTO_LOOK = AppearanceStyle(
    palette={
        "road": ((70, 70, 78), (85, 80, 80)),
        "sidewalk": ((150, 140, 125), (130, 130, 135)),
        "building": ((140, 85, 65), (95, 95, 100), (175, 165, 140), (120, 110, 100)),
        "fence": ((115, 120, 125), (90, 80, 70)),
        "pole": ((70, 70, 75), (110, 110, 100)),
        "traffic light": ((60, 60, 40), (170, 150, 40)),
        "traffic sign": ((200, 40, 40), (240, 240, 240), (30, 70, 160)),
        "vegetation": ((65, 95, 40), (90, 110, 45), (130, 110, 50)),
        "terrain": ((145, 135, 85), (120, 130, 70)),
        "sky": ((195, 200, 210), (165, 190, 215), (220, 220, 225)),
        "person": ((40, 40, 45), (70, 65, 60), (50, 55, 80), (120, 100, 80)),
        "car": ((40, 40, 45), (180, 180, 185), (220, 220, 225), (90, 95, 100), (110, 30, 30), (30, 40, 70)),
    },
    jitter=12.0,
    texture=1.0,
    window=(20, 30, 45),
    exposure=(0.75, 1.15),
    cast=0.05,
    shadow_p=0.5,
    vignette=0.3,
    blur=(0.3, 0.9),
    noise=(3.0, 7.0),
)

MINORITY = ("fence", "pole", "traffic light", "traffic sign", "person")


@dataclass(frozen=True)
class Variant:
    """One synthetic-to-real factor: how each domain is laid out and rendered."""

    name: str
    description: str
    source: tuple[LayoutStyle, AppearanceStyle]
    target: tuple[LayoutStyle, AppearanceStyle]

    def style(self, domain: str) -> tuple[LayoutStyle, AppearanceStyle]:
        return self.source if domain == "source" else self.target


VARIANTS = {
    v.name: v
    for v in (
        Variant(
            "materials",
            "class-conditional materials, textures, lighting and layout (generator v2; the original ToyCity)",
            (SIM_LAYOUT, SIM_LOOK),
            (PHOTO_LAYOUT, PHOTO_LOOK),
        ),
        Variant(
            "small_objects",
            "the sim domain's materials, but small and thin objects are low in contrast (dull, taking part "
            "of the colour of what is behind them), as street furniture and pedestrians are in real photos, "
            "under a slightly blurry, noisy sensor and an overcast sky: the source model swallows them into "
            "the classes around them",
            (SIM_LAYOUT, SIM_LOOK),
            (
                PHOTO_LAYOUT,
                replace(
                    SIM_LOOK,
                    palette={**SIM_LOOK.palette, "sky": PHOTO_LOOK.palette["sky"]},
                    camouflage=(0.5, 0.75),
                    camouflage_classes=MINORITY,
                    texture=0.8,
                    exposure=(0.8, 1.1),
                    cast=0.04,
                    blur=(0.3, 0.7),
                    noise=(2.0, 6.0),
                ),
            ),
        ),
        Variant(
            "fog",
            "the sim domain's materials in bad weather: fog of varying density and tint (contrast falls "
            "with distance to the airlight, far objects fade into the sky), a wet, darker street, and a "
            "noisy sensor",
            (SIM_LAYOUT, SIM_LOOK),
            (
                PHOTO_LAYOUT,
                replace(
                    SIM_LOOK,
                    fog=(0.3, 1.5),
                    fog_tint=0.12,
                    wet=(0.2, 0.5),
                    exposure=(0.7, 1.1),
                    blur=(0.3, 0.8),
                    noise=(3.0, 7.0),
                ),
            ),
        ),
    )
}
"""The ToyCity suite: ``sfseg toycity generate --variant NAME --seed S``. Generator seed 1 of each variant
is its development world (recipe choices are made there), seed 0 its test world (reported)."""

DEFAULT_VARIANT = "materials"

STYLES = {"source": VARIANTS["materials"].source, "target": VARIANTS["materials"].target}


@dataclass(frozen=True)
class ToyCitySpec:
    """What to generate. The defaults are the benchmark; tests use tiny sizes.

    ``variant`` names one of :data:`VARIANTS`; ``seed`` the world (0: test, 1: development).
    """

    seed: int = 0
    height: int = 96
    width: int = 192
    source_train: int = 300
    source_val: int = 100
    target_train: int = 300
    target_val: int = 100
    variant: str = DEFAULT_VARIANT

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown ToyCity variant {self.variant!r}; variants: {sorted(VARIANTS)}")

    def count(self, domain: str, split: str) -> int:
        return getattr(self, f"{domain}_{split}")

    def to_dict(self) -> dict:
        """The spec as recorded in ``toycity.json`` (the default variant is not written, so that the
        original ToyCity's files stay byte-identical)."""
        d = asdict(self)
        if d["variant"] == DEFAULT_VARIANT:
            del d["variant"]
        return d


def generate_sample(spec: ToyCitySpec, domain: str, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image RGB uint8 (H, W, 3), trainId label uint8 (H, W)) pair."""
    rng = np.random.default_rng([spec.seed, DOMAINS.index(domain), SPLITS.index(split), index])
    layout, look = VARIANTS[spec.variant].style(domain)
    scene = generate_scene(rng, layout, spec.height, spec.width)
    return render(scene, look, rng), scene.label
