"""Random street scenes for SynthDrive, laid out in the level frame of ``camera.py``.

Sizes and spacings are those of European streets (lane 3.0-3.6 m, car 4.2-4.9 m, bus 10-12 m,
pavement 1.8-4 m) so that Cityscapes-trained intuition about scale carries over.

The camera rides in an ego car, and no solid reaches into that car (1.8 m wide) or into its lane
nearer than a following distance, or one object would fill the view: the ego car keeps within
0.1 lane of its lane's centre; other traffic drifts at most 0.2 m and turns at most 0.02 rad,
which leaves at least 1.1 m between a vehicle in the next lane and the camera; parked cars stand
on parking strips beyond the outer lanes; tree crowns start above the ego car's roof; the first
vehicle ahead in the ego lane keeps ``FOLLOWING``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from cityscapesscripts.helpers.labels import name2label

from adperception.data.formats import INSTANCE_OFFSET
from adperception.data.synth.camera import CITYSCAPES_PITCH, Camera
from adperception.data.synth.raycast import Box, Cylinder, Solid, Sphere

LABEL = {
    name: name2label[name].id
    for name in (
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "motorcycle",
        "bicycle",
    )
}


# Metres from the camera to the nearest end of the first vehicle ahead in the ego lane. In
# Cityscapes the lead car is rarely nearer than 6 m (2-3 m beyond the ego car's bonnet): a car
# there covers ~15 % of the frame; a truck or bus would cover half, so they keep 9 m.
FOLLOWING = {
    "car": (6.0, 20.0),
    "motorcycle": (6.0, 20.0),
    "truck": (9.0, 24.0),
    "bus": (9.0, 24.0),
}
# Width of a parking strip (m), which holds a 1.9 m car drifting 0.1 m and turned 0.03 rad
# (1.9 + 2 × 0.1 + 4.9 × 0.03 = 2.25 m), and how often a side of the street has one.
PARKING_STRIP = (2.3, 2.6)
PARKING_PROBABILITY = 0.65


class Texture(IntEnum):
    """Procedural surface patterns, evaluated at the hit point in ``render.py``."""

    PLAIN = 0
    ASPHALT = 1
    PAVEMENT = 2
    GRASS = 3
    FACADE = 4
    FOLIAGE = 5


@dataclass(frozen=True)
class SceneObject:
    """One solid with its Cityscapes label id and instanceIds value (label id for stuff)."""

    solid: Solid
    label_id: int
    instance_id: int
    albedo: tuple[float, float, float]
    texture: Texture = Texture.PLAIN


@dataclass(frozen=True)
class Ground:
    """The ground plane y = 0: road between ``road`` x bounds, pavements, then terrain. Traffic
    drives between the ``travel`` bounds (the road less its parking strips), the ego car in
    its ``ego_lane``; dashed ``lane_lines`` separate the lanes."""

    road: tuple[float, float]
    sidewalk: tuple[float, float]
    lane_lines: tuple[float, ...]
    travel: tuple[float, float]
    ego_lane: tuple[float, float]
    max_distance: float = 400.0


@dataclass(frozen=True)
class Scene:
    camera: Camera
    ground: Ground
    objects: tuple[SceneObject, ...]
    sun: tuple[float, float, float]
    haze_distance: float
    exposure: float


FACADES = np.array(
    [
        [0.72, 0.66, 0.55],
        [0.58, 0.58, 0.6],
        [0.62, 0.38, 0.3],
        [0.8, 0.79, 0.74],
        [0.55, 0.5, 0.42],
        [0.68, 0.6, 0.5],
    ]
)
PAINTS = np.array(
    [
        [0.75, 0.75, 0.76],
        [0.1, 0.1, 0.11],
        [0.55, 0.08, 0.07],
        [0.12, 0.2, 0.45],
        [0.45, 0.46, 0.48],
        [0.85, 0.85, 0.82],
        [0.2, 0.35, 0.25],
        [0.6, 0.5, 0.3],
    ]
)
CLOTHES = np.array(
    [
        [0.15, 0.15, 0.2],
        [0.5, 0.1, 0.1],
        [0.2, 0.3, 0.55],
        [0.6, 0.55, 0.45],
        [0.1, 0.35, 0.2],
        [0.7, 0.7, 0.7],
        [0.35, 0.25, 0.2],
    ]
)
SKIN = (0.75, 0.58, 0.47)
FOLIAGE_GREEN = (0.28, 0.42, 0.16)
BARK = (0.3, 0.22, 0.15)


class _Builder:
    """Collects objects and numbers instances per class as Cityscapes does (id·1000 + k)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.objects: list[SceneObject] = []
        self.counts: dict[int, int] = {}

    def colour(self, palette: np.ndarray | tuple[float, float, float], jitter: float = 0.04):
        base = (
            palette[self.rng.integers(len(palette))]
            if isinstance(palette, np.ndarray)
            else np.asarray(palette)
        )
        return tuple(np.clip(base + self.rng.normal(0.0, jitter, 3), 0.02, 0.95).tolist())

    def instance(self, label: str) -> int:
        label_id = LABEL[label]
        k = self.counts.get(label_id, 0)
        self.counts[label_id] = k + 1
        return label_id * INSTANCE_OFFSET + k

    def add(
        self,
        solids: list[Solid],
        label: str,
        albedo,
        texture: Texture = Texture.PLAIN,
        instance_id: int | None = None,
    ) -> None:
        iid = LABEL[label] if instance_id is None else instance_id
        for solid in solids:
            self.objects.append(SceneObject(solid, LABEL[label], iid, albedo, texture))

    def person(self, x: float, z: float, label: str, base: float = 0.0) -> None:
        """A standing person (or a rider whose body starts at height ``base``)."""
        height = self.rng.uniform(1.55, 1.9) - 0.25
        radius = self.rng.uniform(0.19, 0.26)
        iid = self.instance(label)
        self.add(
            [Cylinder((x, -base, z), radius, height - base)],
            label,
            self.colour(CLOTHES),
            instance_id=iid,
        )
        self.add([Sphere((x, -height - 0.12, z), 0.12)], label, SKIN, instance_id=iid)

    def vehicle(self, x: float, z: float, yaw: float, kind: str) -> float:
        """Places a vehicle centred on ``x`` whose nearest end is ``z`` metres ahead of the
        camera, and returns its length."""
        rng = self.rng
        if kind == "car":
            length, width, height = (
                rng.uniform(4.2, 4.9),
                rng.uniform(1.7, 1.9),
                rng.uniform(1.4, 1.6),
            )
        elif kind == "truck":
            length, width, height = (
                rng.uniform(6.5, 9.0),
                rng.uniform(2.3, 2.5),
                rng.uniform(2.9, 3.6),
            )
        elif kind == "bus":
            length, width, height = rng.uniform(10.0, 12.0), 2.55, rng.uniform(3.0, 3.3)
        else:  # motorcycle
            length, width, height = 2.0, 0.4, 1.15
        c, s = np.cos(yaw), np.sin(yaw)
        z += (length * abs(c) + width * abs(s)) / 2  # the centre

        def at(dl: float) -> tuple[float, float]:  # a point dl metres along the heading
            return x + s * dl, z + c * dl

        iid = self.instance(kind)
        paint = self.colour(PAINTS)
        if kind == "car":
            bx, bz = at(0.0)
            cx, cz = at(-0.05 * length)
            body = Box((bx, -0.57, bz), (width / 2, 0.45, length / 2), yaw)
            cabin = Box(
                (cx, -(1.02 + height) / 2, cz),
                (width * 0.44, (height - 1.02) / 2, length * 0.27),
                yaw,
            )
            self.add([body], kind, paint, instance_id=iid)
            self.add([cabin], kind, self.colour((0.16, 0.19, 0.22)), instance_id=iid)
        elif kind == "truck":
            hx, hz = at(length / 2 - 1.1)
            bx, bz = at(-1.2)
            cab = Box((hx, -1.5, hz), (width / 2, 1.2, 1.1), yaw)
            cargo = Box(
                (bx, -(0.5 + height) / 2, bz),
                (width / 2, (height - 0.5) / 2, (length - 2.4) / 2),
                yaw,
            )
            self.add([cab], kind, paint, instance_id=iid)
            self.add([cargo], kind, self.colour(FACADES), instance_id=iid)
        elif kind == "bus":
            self.add(
                [
                    Box(
                        (x, -(0.3 + height) / 2, z),
                        (width / 2, (height - 0.3) / 2, length / 2),
                        yaw,
                    )
                ],
                kind,
                paint,
                instance_id=iid,
            )
        else:  # motorcycle with its rider
            self.add(
                [
                    Box(
                        (x, -(0.05 + height) / 2, z),
                        (width / 2, (height - 0.05) / 2, length / 2),
                        yaw,
                    )
                ],
                kind,
                paint,
                instance_id=iid,
            )
            self.person(x, z, "rider", base=0.75)
        return length


def sample_scene(rng: np.random.Generator, width: int, height: int) -> Scene:
    """Draws one street scene seen by a Cityscapes-like camera at ``width``×``height``."""
    camera = Camera.cityscapes(
        width, height, pitch=CITYSCAPES_PITCH + rng.normal(0.0, 0.008), yaw=rng.uniform(-0.04, 0.04)
    )
    b = _Builder(rng)

    lane = rng.uniform(3.0, 3.6)
    lanes = int(rng.choice([2, 3, 4], p=[0.4, 0.4, 0.2]))
    ego_lane = int(rng.integers(lanes))
    # The ego car keeps within 0.1 lane of its lane's centre (see the module docstring).
    travel_left = -(ego_lane + rng.uniform(0.4, 0.6)) * lane
    travel_right = travel_left + lanes * lane
    # Parked cars stand on parking strips beyond the outer lanes, never in a lane anyone drives.
    parking = [
        rng.uniform(*PARKING_STRIP) if rng.random() < PARKING_PROBABILITY else 0.0 for _ in range(2)
    ]
    road_left, road_right = travel_left - parking[0], travel_right + parking[1]
    walk = (rng.uniform(1.8, 4.0), rng.uniform(1.8, 4.0))
    ground = Ground(
        road=(road_left, road_right),
        sidewalk=(road_left - walk[0], road_right + walk[1]),
        lane_lines=tuple(travel_left + k * lane for k in range(1, lanes)),
        travel=(travel_left, travel_right),
        ego_lane=(travel_left + ego_lane * lane, travel_left + (ego_lane + 1) * lane),
    )

    for side in (-1, 1):
        _street_side(b, side, ground)

    if rng.random() < 0.5:  # a block closing the view far ahead
        far, tall = rng.uniform(170.0, 260.0), rng.uniform(10.0, 30.0)
        b.add(
            [Box((0.0, -tall / 2, far + 6.0), (90.0, tall / 2, 6.0))],
            "building",
            b.colour(FACADES),
            Texture.FACADE,
        )
    # Moving traffic: sequences of vehicles per lane; lanes left of the ego lane may be oncoming.
    # The ego lane's first vehicle keeps a following distance; in the other lanes they may be
    # alongside. Drift and heading are bounded so that none leaves its lane.
    kinds, probs = ["car", "truck", "bus", "motorcycle"], [0.78, 0.1, 0.07, 0.05]
    for k in range(lanes):
        centre = travel_left + (k + 0.5) * lane
        oncoming = k < ego_lane and rng.random() < 0.6
        kind = str(rng.choice(kinds, p=probs))
        z = rng.uniform(*FOLLOWING[kind]) if k == ego_lane else rng.uniform(-6.0, 10.0)
        while z < 90.0:
            yaw = (np.pi if oncoming else 0.0) + rng.uniform(-0.02, 0.02)
            z += b.vehicle(centre + rng.uniform(-0.2, 0.2), z, yaw, kind) + rng.uniform(3.0, 25.0)
            kind = str(rng.choice(kinds, p=probs))
    # Parked cars, the nearest alongside the ego car and cut by the image border.
    for edge, inward, strip in ((road_left, 1, parking[0]), (road_right, -1, parking[1])):
        if strip == 0.0:
            continue
        z = rng.uniform(-4.0, 6.0)
        while z < 70.0:
            x = edge + inward * (strip / 2 + rng.uniform(-0.1, 0.1))
            z += b.vehicle(x, z, rng.uniform(-0.03, 0.03), "car") + rng.uniform(0.8, 8.0)
    # Cyclists at the right edge of the traffic lanes; pedestrians crossing.
    for _ in range(int(rng.random() < 0.45) * int(rng.integers(1, 3))):
        x, z = travel_right - rng.uniform(0.6, 1.2), rng.uniform(8.0, 40.0)
        iid = b.instance("bicycle")
        b.add([Box((x, -0.5, z), (0.06, 0.5, 0.85))], "bicycle", b.colour(PAINTS), instance_id=iid)
        b.person(x, z, "rider", base=0.8)
    for _ in range(int(rng.random() < 0.3) * int(rng.integers(1, 4))):
        b.person(rng.uniform(road_left, road_right), rng.uniform(8.0, 30.0), "person")

    azimuth, elevation = rng.uniform(0.0, 2 * np.pi), rng.uniform(0.35, 1.05)
    sun = (
        np.cos(elevation) * np.sin(azimuth),
        -np.sin(elevation),
        np.cos(elevation) * np.cos(azimuth),
    )
    return Scene(
        camera=camera,
        ground=ground,
        objects=tuple(b.objects),
        sun=sun,
        haze_distance=float(rng.uniform(250.0, 700.0)),
        exposure=float(rng.uniform(0.85, 1.1)),
    )


def _street_side(b: _Builder, side: int, ground: Ground) -> None:
    """Buildings, walls, trees, poles, signs and pedestrians on one side (-1 left, +1 right)."""
    rng = b.rng
    kerb = ground.road[0] if side < 0 else ground.road[1]
    outer = ground.sidewalk[0] if side < 0 else ground.sidewalk[1]
    z = rng.uniform(-15.0, 0.0)
    while z < 160.0:
        kind = rng.choice(["building", "gap", "wall"], p=[0.65, 0.2, 0.15])
        length = rng.uniform(8.0, 30.0) if kind == "building" else rng.uniform(5.0, 18.0)
        setback = rng.uniform(0.0, 4.0)
        if kind == "building":
            depth, height = rng.uniform(8.0, 15.0), rng.uniform(6.0, 28.0)
            x = outer + side * (setback + depth / 2)
            b.add(
                [Box((x, -height / 2, z + length / 2), (depth / 2, height / 2, length / 2))],
                "building",
                b.colour(FACADES),
                Texture.FACADE,
            )
        else:
            if kind == "wall":
                label = "wall" if rng.random() < 0.5 else "fence"
                tall = rng.uniform(0.8, 2.2)
                x = outer + side * setback
                b.add(
                    [Box((x, -tall / 2, z + length / 2), (0.15, tall / 2, length / 2))],
                    label,
                    b.colour(FACADES if label == "wall" else (0.5, 0.45, 0.38)),
                )
            for _ in range(int(rng.integers(1, 3))):
                _tree(
                    b, outer + side * (setback + rng.uniform(1.5, 5.0)), z + rng.uniform(0, length)
                )
        z += length + rng.uniform(0.0, 4.0)

    z = rng.uniform(2.0, 14.0)
    while z < 110.0:  # street trees, poles with signs and lights, near the kerb
        x = kerb + side * rng.uniform(0.4, 0.8)
        if rng.random() < 0.45:
            _tree(b, outer - side * 0.8, z)
        else:
            tall = rng.uniform(4.0, 8.0)
            b.add([Cylinder((x, 0.0, z), 0.08, tall)], "pole", b.colour((0.45, 0.46, 0.47)))
            attachment = rng.random()
            if attachment < 0.4:
                y = -rng.uniform(2.2, 3.2)
                b.add(
                    [Box((x - side * 0.35, y, z - 0.1), (0.3, 0.3, 0.03))],
                    "traffic sign",
                    b.colour(np.array([[0.85, 0.85, 0.85], [0.15, 0.3, 0.7], [0.75, 0.1, 0.1]])),
                )
            elif attachment < 0.6:
                b.add(
                    [Box((x - side * 0.3, -tall + 0.5, z - 0.2), (0.17, 0.45, 0.14))],
                    "traffic light",
                    (0.08, 0.08, 0.08),
                )
        z += rng.uniform(8.0, 30.0)

    for _ in range(int(rng.poisson(3.0))):
        b.person(
            rng.uniform(min(kerb, outer) + 0.4, max(kerb, outer) - 0.4),
            rng.uniform(3.0, 60.0),
            "person",
        )


def _tree(b: _Builder, x: float, z: float) -> None:
    rng = b.rng
    trunk, crown = rng.uniform(2.2, 3.4), rng.uniform(1.3, 2.8)
    b.add([Cylinder((x, 0.0, z), 0.14, trunk + crown * 0.5)], "vegetation", BARK)
    b.add(
        [Sphere((x, -(trunk + crown), z), crown)],
        "vegetation",
        b.colour(FOLIAGE_GREEN, 0.05),
        Texture.FOLIAGE,
    )
