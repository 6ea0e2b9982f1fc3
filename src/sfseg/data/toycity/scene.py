"""Procedural street-scene layouts for ToyCity: trainId label maps plus instance maps.

A scene is drawn in perspective with a straight road running to a vanishing point on the horizon. The
layout statistics (horizon height, road width, object counts and sizes) differ per domain; see
:mod:`sfseg.data.toycity.worlds`. Appearance (colour, texture, lighting) is applied afterwards by
:mod:`sfseg.data.toycity.render`, from the instance map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sfseg.data.classes import TOYCITY

C = {name: i for i, name in enumerate(TOYCITY.names)}


@dataclass(frozen=True)
class LayoutStyle:
    """Layout statistics of one domain. Ranges are (low, high) for uniform draws.

    Sizes are fractions of the image height ``H`` or width ``W``; ``t`` below is depth in [0, 1] from the
    horizon (0) to the bottom row (1), so object size grows linearly with ``t`` (pinhole perspective on a
    flat ground plane).
    """

    horizon: tuple[float, float]  # horizon row, fraction of H
    road_half_width: tuple[float, float]  # at the bottom row, fraction of W
    sidewalk_width: tuple[float, float]  # at the bottom row, fraction of W
    building_height: tuple[float, float]  # fraction of the horizon row
    building_gap_p: float  # chance that a facade slot shows sky instead
    trees: tuple[int, int]
    tree_radius: tuple[float, float]  # fraction of H
    terrain_p: float  # chance that a side of the street beyond the sidewalk is terrain
    fence_p: float
    poles: tuple[int, int]
    pole_height: float  # at t = 1, fraction of H
    sign_p: float
    light_p: float
    cars: tuple[int, int]
    car_width: float  # at t = 1, fraction of W
    persons: tuple[int, int]
    person_height: float  # at t = 1, fraction of H
    pole_width: tuple[float, float] = (1.5, 2.5)  # pixels: base + t * slope (at least 2 unless thin_poles)
    sign_size: float = 0.06  # sign half-size at t = 1, fraction of H
    light_size: float = 0.05  # light width at t = 1, fraction of H
    thin_poles: bool = False  # allow 1-pixel poles (the minimum width is otherwise 2)


@dataclass
class Scene:
    """A generated layout.

    Attributes:
        label: (H, W) uint8 trainIds.
        inst: (H, W) int32 instance ids; ``inst_class[i]`` is the class of instance ``i``.
        horizon: horizon row.
        depth: (H, W) float32 depth ``t`` of the ground row under each pixel (0 above the horizon).
    """

    label: np.ndarray
    inst: np.ndarray
    inst_class: list[int]
    horizon: int
    depth: np.ndarray


class _Canvas:
    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.label = np.full((h, w), C["sky"], np.uint8)
        self.inst = np.zeros((h, w), np.int32)
        self.inst_class = [C["sky"]]

    def paint(self, mask: np.ndarray, cls: int) -> None:
        if not mask.any():
            return
        self.inst_class.append(cls)
        self.label[mask] = cls
        self.inst[mask] = len(self.inst_class) - 1

    def rect(self, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
        return (self.yy >= y0) & (self.yy < y1) & (self.xx >= x0) & (self.xx < x1)

    def ellipse(self, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return ((self.yy - cy) / max(ry, 0.5)) ** 2 + ((self.xx - cx) / max(rx, 0.5)) ** 2 <= 1.0


def _u(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def generate_scene(rng: np.random.Generator, style: LayoutStyle, height: int, width: int) -> Scene:
    """Draw one street scene. Deterministic given the generator state (the draws happen in a fixed order:
    the horizon and road, the facades, the trees, the ground, then the objects far to near)."""
    cv = _Canvas(height, width)
    h, w = height, width
    hz = int(round(h * _u(rng, style.horizon)))
    vx = w / 2 + rng.uniform(-0.12, 0.12) * w
    road_hw = _u(rng, style.road_half_width) * w
    side_w = _u(rng, style.sidewalk_width) * w
    depth = np.clip((cv.yy - hz) / (h - hz), 0, 1)
    _draw_skyline(cv, rng, style, hz)
    _draw_ground(cv, rng, style, hz, vx, road_hw, side_w, depth)
    _draw_objects(cv, rng, style, hz, vx, road_hw, side_w)
    return Scene(cv.label, cv.inst, cv.inst_class, hz, depth.astype(np.float32))


def _draw_skyline(cv: _Canvas, rng: np.random.Generator, style: LayoutStyle, hz: int) -> None:
    """Facades along the skyline, then background trees standing on the horizon."""
    h, w = cv.label.shape
    x = 0.0
    while x < w:
        bw = rng.uniform(0.08, 0.22) * w
        if rng.random() > style.building_gap_p:
            top = hz - _u(rng, style.building_height) * hz
            cv.paint(cv.rect(top, hz + 1, x, x + bw), C["building"])
        x += bw
    for _ in range(rng.integers(style.trees[0], style.trees[1] + 1)):
        r = _u(rng, style.tree_radius) * h
        cx = rng.uniform(0, w)
        cv.paint(cv.ellipse(hz - 0.6 * r, cx, r, r * rng.uniform(0.8, 1.4)), C["vegetation"])


def _draw_ground(
    cv, rng, style: LayoutStyle, hz: int, vx: float, road_hw: float, side_w: float, depth
) -> None:
    """The ground plane: terrain or facades down to the street on each side (with a fence, maybe), the
    sidewalks, then the road."""
    h = cv.label.shape[0]
    ground = cv.yy >= hz
    dx = cv.xx - vx
    half = depth * road_hw + 1
    outer = half + depth * side_w + 1
    for sign in (-1, 1):
        side = ground & (dx * sign > 0)
        beyond = side & (np.abs(dx) > outer)
        cv.paint(beyond, C["terrain"] if rng.random() < style.terrain_p else C["building"])
        if rng.random() < style.fence_p:
            # A fence standing on the outer sidewalk edge, between depths t0 and t1.
            t_edge = np.abs(dx) / (road_hw + side_w + 1e-6)
            y_edge = hz + t_edge * (h - hz)
            t0, t1 = rng.uniform(0.05, 0.3), rng.uniform(0.5, 1.0)
            fence_h = (0.08 + 0.08 * rng.random()) * h * t_edge + 2
            m = (dx * sign > 0) & (t_edge >= t0) & (t_edge <= t1)
            m &= (cv.yy <= y_edge) & (cv.yy >= y_edge - fence_h) & (np.abs(dx) >= outer - 1)
            cv.paint(m, C["fence"])
    cv.paint(ground & (np.abs(dx) > half) & (np.abs(dx) <= outer), C["sidewalk"])
    cv.paint(ground & (np.abs(dx) <= half), C["road"])


def _draw_objects(cv, rng, style: LayoutStyle, hz: int, vx: float, road_hw: float, side_w: float) -> None:
    """Poles (with a sign or a light), cars and persons, drawn far to near so that near objects occlude
    far ones."""
    h, w = cv.label.shape
    objects: list[tuple[float, str]] = []
    objects += [(rng.uniform(0.1, 0.95), "pole") for _ in range(rng.integers(*_incl(style.poles)))]
    objects += [(rng.uniform(0.08, 1.0), "car") for _ in range(rng.integers(*_incl(style.cars)))]
    objects += [(rng.uniform(0.15, 1.0), "person") for _ in range(rng.integers(*_incl(style.persons)))]
    objects.sort(key=lambda o: o[0])
    for t, kind in objects:
        y = hz + t * (h - hz)
        s = rng.choice((-1, 1))
        if kind == "pole":
            _draw_pole(
                cv, rng, style, t, y, vx + s * (t * road_hw + t * side_w * rng.uniform(0.5, 0.9) + 1), s
            )
        elif kind == "car":
            cw = t * style.car_width * w + 3
            ch = 0.6 * cw
            x = vx + rng.uniform(-0.75, 0.75) * t * road_hw
            body = cv.rect(y - 0.55 * ch, y, x - cw / 2, x + cw / 2)
            cv.paint(body | cv.rect(y - ch, y - 0.5 * ch, x - 0.33 * cw, x + 0.33 * cw), C["car"])
        else:
            x = vx + s * (t * road_hw + t * side_w * rng.uniform(0.2, 0.8) + 1)
            hh = t * style.person_height * h + 3
            body = cv.ellipse(y - 0.42 * hh, x, 0.42 * hh, 0.14 * hh + 0.5)
            head = cv.ellipse(y - 0.9 * hh, x, 0.1 * hh + 0.4, 0.1 * hh + 0.4)
            cv.paint(body | head, C["person"])


def _draw_pole(cv, rng, style: LayoutStyle, t: float, y: float, x: float, s: int) -> None:
    """A pole at depth ``t`` standing at ``(x, y)``, with a traffic sign or, failing that, maybe a light."""
    h = cv.label.shape[0]
    ph = t * style.pole_height * h + 4
    pw = max(1.0 if style.thin_poles else 2.0, round(style.pole_width[0] + t * style.pole_width[1]))
    cv.paint(cv.rect(y - ph, y, x, x + pw), C["pole"])
    if rng.random() < style.sign_p:
        r = max(2.5, t * style.sign_size * h)
        cv.paint(cv.rect(y - ph - r, y - ph + r, x + pw / 2 - r, x + pw / 2 + r), C["traffic sign"])
    elif rng.random() < style.light_p:
        lw = max(3.0, t * style.light_size * h)
        cv.paint(cv.rect(y - ph, y - ph + 2.5 * lw, x - s * lw, x - s * lw + lw), C["traffic light"])


def _incl(r: tuple[int, int]) -> tuple[int, int]:
    return r[0], r[1] + 1
