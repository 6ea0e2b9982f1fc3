"""Appearance of ToyCity scenes: per-domain materials, textures, lighting, blur and sensor noise.

The *sim* style is what a game engine with flat materials gives: one colour per object, smooth gradients,
no noise. The *photo* style changes what each class looks like (car paint from saturated toys to greys,
blue sky to overcast, flat facades to brick with windows, textured asphalt with lane markings, leafy
vegetation), adds exposure, colour cast, cast shadows, vignetting, optical blur and sensor noise. Because
the change is class-conditional, re-estimating normalisation statistics (AdaBN) cannot undo it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from sfseg.data.toycity.scene import C, Scene

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class AppearanceStyle:
    """How one domain renders.

    Attributes:
        palette: per class name, the material colours an instance may take (one is drawn per instance).
        jitter: per-instance colour standard deviation, in 0..255 units.
        texture: strength of material textures (asphalt grain, tiles, leaves, clouds); 0 = flat.
        window: RGB of facade windows (added to a darkened facade).
        exposure: range of a global brightness gain.
        cast: standard deviation of per-channel gains (colour temperature / white balance).
        shadow_p: chance of a cast shadow over part of the street.
        vignette: darkening at the corners (0 = none).
        blur: range of the Gaussian blur sigma, in pixels.
        noise: range of the sensor-noise standard deviation, in 0..255 units.
        camouflage: range of the share by which each instance of ``camouflage_classes`` takes the mean
            colour of its surroundings (low contrast: dull grey poles against grey facades, dark clothes
            against asphalt); 0 = none.
        camouflage_classes: the classes it applies to.
        fog: range of the fog density ``beta``: a pixel at ground depth ``t`` (0 at the horizon, 1 at the
            bottom row) keeps ``exp(-beta * (1 - t))`` of its colour and takes the rest from ``fog_colour``;
            everything at or above the horizon is as far as the horizon. 0 = clear.
        fog_colour: the airlight colour.
        fog_tint: standard deviation of a per-image change of the airlight colour (haze at dawn is warm,
            under overcast skies grey-blue).
        wet: how much darker road and sidewalk are (a wet street), drawn per image in this range.
    """

    palette: dict[str, tuple[RGB, ...]]
    jitter: float
    texture: float
    window: RGB
    exposure: tuple[float, float] = (1.0, 1.0)
    cast: float = 0.0
    shadow_p: float = 0.0
    vignette: float = 0.0
    blur: tuple[float, float] = (0.0, 0.0)
    noise: tuple[float, float] = (0.0, 0.0)
    camouflage: tuple[float, float] = (0.0, 0.0)
    camouflage_classes: tuple[str, ...] = ()
    fog: tuple[float, float] = (0.0, 0.0)
    fog_colour: RGB = (200, 202, 205)
    fog_tint: float = 0.0
    wet: tuple[float, float] = (0.0, 0.0)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise in [-1, 1] with features about ``cell`` pixels wide (bicubic-upsampled white noise)."""
    gh, gw = max(2, int(np.ceil(h / cell)) + 1), max(2, int(np.ceil(w / cell)) + 1)
    coarse = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    up = Image.fromarray(coarse, mode="F").resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(up), -1, 1)


def render(scene: Scene, style: AppearanceStyle, rng: np.random.Generator) -> np.ndarray:
    """Render a scene to an (H, W, 3) uint8 RGB image."""
    label, inst = scene.label, scene.inst
    h, w = label.shape
    names = {v: k for k, v in C.items()}

    colours = np.zeros((len(scene.inst_class), 3), np.float32)
    for i, cls in enumerate(scene.inst_class):
        options = style.palette[names[cls]]
        base = np.asarray(options[rng.integers(len(options))], np.float32)
        colours[i] = base + rng.normal(0, style.jitter, 3)
    img = colours[inst]
    if style.camouflage[1] > 0:
        _camouflage(img, scene, style, rng)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    hz = max(scene.horizon, 1)
    sky = label == C["sky"]
    img[sky] *= (0.85 + 0.3 * np.clip(yy / hz, 0, 1))[sky, None]
    facade = label == C["building"]
    img[facade] *= (1.05 - 0.15 * yy / h)[facade, None]

    _textures(img, scene, style, rng)

    # Lighting: exposure, colour cast, a cast shadow across the street, vignetting.
    gain = rng.uniform(*style.exposure) * (1 + rng.normal(0, style.cast, 3))
    img *= gain.astype(np.float32)
    if rng.random() < style.shadow_p:
        slope = rng.uniform(-2.5, 2.5)
        x0 = rng.uniform(0.2, 0.8) * w
        shade = (xx - x0 - slope * (yy - hz) < 0) & (yy > hz - rng.uniform(0, 0.3) * h)
        img[shade] *= rng.uniform(0.45, 0.7)
    if style.vignette:
        r2 = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
        img *= (1 - style.vignette * r2 / 2)[..., None]
    if style.wet[1] > 0:
        street = (label == C["road"]) | (label == C["sidewalk"])
        img[street] *= np.float32(1 - rng.uniform(*style.wet))
    if style.fog[1] > 0:
        beta = rng.uniform(*style.fog)
        air = np.asarray(style.fog_colour, np.float32) * (1 + rng.normal(0, style.fog_tint, 3)).astype(
            np.float32
        )
        distance = 1 - np.where(yy > scene.horizon, scene.depth, 0.0)  # 1 at and above the horizon
        keep = np.exp(-beta * distance)[..., None]
        img = img * keep + air * (1 - keep)

    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    sigma = rng.uniform(*style.blur)
    if sigma > 0:
        out = out.filter(ImageFilter.GaussianBlur(float(sigma)))
    arr = np.asarray(out, np.float32)
    sigma_n = rng.uniform(*style.noise)
    if sigma_n > 0:
        arr = arr + rng.normal(0, sigma_n, arr.shape)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _camouflage(img: np.ndarray, scene: Scene, style: AppearanceStyle, rng: np.random.Generator) -> None:
    """Blend each instance of ``camouflage_classes`` toward the mean colour of a ring around it."""
    inst = scene.inst
    classes = {C[n] for n in style.camouflage_classes}
    for i, cls in enumerate(scene.inst_class):
        if cls not in classes:
            continue
        mask = inst == i
        if not mask.any():
            continue
        grown = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))) > 0
        ring = grown & ~mask
        if not ring.any():
            continue
        k = np.float32(rng.uniform(*style.camouflage))
        img[mask] = (1 - k) * img[mask] + k * img[ring].mean(0)


def _textures(img: np.ndarray, scene: Scene, style: AppearanceStyle, rng: np.random.Generator) -> None:
    """Material textures and markings, applied in place; amplitudes scale with ``style.texture``."""
    label = scene.label
    h, w = label.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grain = rng.normal(0, 1, (h, w)).astype(np.float32)

    def modulate(cls: str, amount: np.ndarray | float) -> None:
        m = label == C[cls]
        amount = style.texture * np.broadcast_to(np.float32(amount), (h, w))
        img[m] *= (1 + amount[m])[:, None]

    modulate("road", 0.08 * grain + 0.12 * smooth_noise(rng, h, w, 12))
    # Dashed centre line and worn edge lines on the asphalt (still labelled road).
    road = label == C["road"]
    cols = np.where(road.any(0))[0]
    if cols.size:
        depth = scene.depth
        centre = (cols[0] + cols[-1]) / 2
        dash = np.sin(6.0 / np.maximum(depth, 0.05)) > 0.2
        line = road & (np.abs(xx - centre) < 0.4 + 1.2 * depth) & dash
        img[line] = 0.4 * img[line] + np.float32(150)

    tiles = (np.mod(xx + 3 * np.floor(yy / 4), 7) < 1) | (np.mod(yy, 4) < 1)
    modulate("sidewalk", np.where(tiles, -0.25, 0.0) + 0.06 * grain)

    # Facade windows: a dark, bluish grid on every building.
    facade = label == C["building"]
    wx, wy = rng.uniform(5, 9), rng.uniform(5, 8)
    window = facade & (np.mod(xx, wx) < wx * 0.5) & (np.mod(yy, wy) < wy * 0.5) & (yy < scene.horizon)
    img[window] = img[window] * 0.35 + np.float32(style.window)
    modulate("building", 0.06 * grain)

    modulate("vegetation", 0.35 * smooth_noise(rng, h, w, 2.5) + 0.1 * grain)
    modulate("terrain", 0.2 * smooth_noise(rng, h, w, 3) + 0.08 * grain)
    sky = label == C["sky"]
    clouds = np.clip(smooth_noise(rng, h, w, 20), 0, 1)
    img[sky] = img[sky] + (clouds[sky, None] * (235 - img[sky]) * 0.8 * style.texture)
    modulate("car", 0.05 * grain)
    # Car glass: the upper part of each car body is dark.
    car = label == C["car"]
    if car.any():
        above = np.roll(car, 3, axis=0) & car
        glass = car & ~above
        img[glass] = img[glass] * 0.3 + 15
