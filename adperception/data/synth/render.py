"""Ray-casts a ``Scene`` into every SynthDrive target from the same hits.

One primary ray per pixel; the nearest hit over the ground plane and every solid gives the
label and instance ids, the camera depth and the surface normal, and the RGB is shaded from
that same hit (per-class albedo and texture, Lambertian sun with cast shadows on the ground,
distance haze, sensor noise). Each solid is only tested against the pixels of its projected
bounding box, which keeps a 256×512 frame at a few tens of milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from adperception.data.bdd100k_format import LANE_CLASSES
from adperception.data.bdd100k_format import LANE_STYLE_BIT as LANE_DASHED
from adperception.data.synth.camera import Camera, apply
from adperception.data.synth.scene import LABEL, Scene, Texture

NEAR = 0.05
AMBIENT = 0.42
DIFFUSE = 0.78
SKY_HORIZON = np.array([0.78, 0.82, 0.86], dtype=np.float32)
SKY_ZENITH = np.array([0.33, 0.5, 0.78], dtype=np.float32)
ROAD = np.array([0.32, 0.32, 0.34], dtype=np.float32)
SIDEWALK = np.array([0.62, 0.6, 0.58], dtype=np.float32)
TERRAIN = np.array([0.42, 0.5, 0.26], dtype=np.float32)
GROUND_CLASSES = ("road", "sidewalk", "terrain")


#: BDD100K's drivable-area ids (``adperception.data.datasets.bdd100k``).
DIRECT, ALTERNATIVE, NOT_DRIVABLE = 0, 1, 2
#: Half-widths in metres of the painted lines: dashed lane separators, solid edge lines, kerbs.
LANE_LINE, EDGE_LINE, KERB = 0.08, 0.07, 0.15
#: Dashes of 3 m every 9 m.
DASH, DASH_PERIOD = 3.0, 9.0
#: BDD100K lane-mask background byte (its writer's 255).
LANE_BACKGROUND = 255


@dataclass(frozen=True)
class Frame:
    """The rendered targets: RGB uint8, label ids uint8, instanceIds uint16 (Cityscapes
    encoding), camera depth float32 metres (0 = sky), camera-frame normals float32 (0 = sky),
    and in BDD100K's encodings the drivable area (uint8: 0 direct = the ego lane, 1 alternative
    = the other travel lanes, 2 background) and the lane markings (uint8 bit codes, 255 where
    there is none)."""

    image: np.ndarray
    label_ids: np.ndarray
    instance_ids: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    drivable: np.ndarray
    lanes: np.ndarray


def lane_markings(ground, x: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
    """Where the ground points (x, z) lie on painted lines: ``dashed`` (lane separators,
    painted only on the dashes), ``separator`` (the same lines over their whole length, as
    BDD100K annotates a dashed lane: one polyline), ``edge`` (solid lines 0.25 m inside the
    road's edges) and ``kerb`` (the kerbstones along them)."""
    road = ground.road
    separator = np.zeros(len(x), dtype=bool)
    for line in ground.lane_lines:
        separator |= np.abs(x - line) < LANE_LINE
    edge = np.zeros(len(x), dtype=bool)
    for line in (road[0] + 0.25, road[1] - 0.25):
        edge |= np.abs(x - line) < EDGE_LINE
    kerb = (np.abs(x - road[0]) < KERB) | (np.abs(x - road[1]) < KERB)
    return {
        "dashed": separator & (np.mod(z, DASH_PERIOD) < DASH),
        "separator": separator,
        "edge": edge,
        "kerb": kerb,
    }


def _drivable_and_lanes(
    scene: Scene, index: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """BDD100K drivable ids and lane codes of the visible ground (``index`` -2 road, -3
    sidewalk): lane codes are ``style << 4 | category`` (direction parallel), single white for
    the painted lines (dashed separators, solid edges) and road curb for the kerbs."""
    ground = scene.ground
    x, z = points[:, 0], points[:, 2]
    road = index == -2
    drivable = np.full(len(index), NOT_DRIVABLE, dtype=np.uint8)
    travel = road & (x >= ground.travel[0]) & (x <= ground.travel[1])
    drivable[travel] = ALTERNATIVE
    drivable[travel & (x >= ground.ego_lane[0]) & (x < ground.ego_lane[1])] = DIRECT
    marks = lane_markings(ground, x, z)
    lanes = np.full(len(index), LANE_BACKGROUND, dtype=np.uint8)
    single_white = LANE_CLASSES.index("single white")
    lanes[(index == -3) & marks["kerb"]] = LANE_CLASSES.index("road curb")
    lanes[road & marks["edge"]] = single_white
    lanes[road & marks["separator"]] = LANE_DASHED | single_white
    return drivable, lanes


@lru_cache
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)


def pixel_windows(camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel windows (v0, v1, u0, u1) covering the projections of N convex hulls (N×K×3 points).

    Segments between points that cross the camera's near plane are clipped to it, so a building
    that starts behind the camera still gets a tight window. Returns the N×4 windows and a mask
    of the hulls that are in front of the camera and inside the image.
    """
    cam = apply(points - camera.origin, camera.rotation)
    z = cam[..., 2]
    i, j = _pairs(points.shape[1])
    crossing = (z[:, i] - NEAR) * (z[:, j] - NEAR) < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (NEAR - z[:, i]) / (z[:, j] - z[:, i])
        clipped = cam[:, i] + a[..., None] * (cam[:, j] - cam[:, i])
        pts = np.concatenate([cam, clipped], axis=1)
        valid = np.concatenate([z >= NEAR, crossing], axis=1)
        u = camera.fx * pts[..., 0] / pts[..., 2] + camera.u0
        v = camera.fy * pts[..., 1] / pts[..., 2] + camera.v0
    windows = np.stack(
        [
            np.floor(np.where(valid, v, np.inf).min(axis=1)),
            np.ceil(np.where(valid, v, -np.inf).max(axis=1)) + 1,
            np.floor(np.where(valid, u, np.inf).min(axis=1)),
            np.ceil(np.where(valid, u, -np.inf).max(axis=1)) + 1,
        ],
        axis=1,
    )
    ok = valid.any(axis=1)
    windows[~ok] = 0
    limits = [camera.height, camera.height, camera.width, camera.width]
    windows = np.clip(windows, 0, limits).astype(np.int64)
    ok &= (windows[:, 0] < windows[:, 1]) & (windows[:, 2] < windows[:, 3])
    return windows, ok


def _hash(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Deterministic value noise in [0, 1) per integer cell (a, b)."""
    x = np.sin(a * 12.9898 + b * 78.233) * 43758.5453
    return x - np.floor(x)


def _window_pixels(window: tuple[int, int, int, int], width: int) -> np.ndarray:
    v0, v1, u0, u1 = window
    return (np.arange(v0, v1)[:, None] * width + np.arange(u0, u1)[None, :]).ravel()


def render(scene: Scene, rng: np.random.Generator) -> Frame:
    """Renders ``scene``; ``rng`` only draws the sensor noise."""
    camera = scene.camera
    h, w = camera.height, camera.width
    origin = camera.origin
    origin = origin.astype(np.float32)
    rays = camera.rays().reshape(-1, 3).astype(np.float32)

    # The ground plane y = 0, cut off at max_distance; beyond it and above the horizon: sky.
    dy = rays[:, 1]
    with np.errstate(divide="ignore"):
        depth = np.where(dy > 1e-9, np.float32(camera.mount_height) / dy, np.float32(np.inf))
    depth[depth > scene.ground.max_distance] = np.inf
    gx = origin[0] + depth * rays[:, 0]
    road, walk = scene.ground.road, scene.ground.sidewalk
    ground_class = np.where(
        (gx >= road[0]) & (gx <= road[1]), 0, np.where((gx >= walk[0]) & (gx <= walk[1]), 1, 2)
    )
    # Object index per pixel: >= 0 scene.objects[i]; -2 road, -3 sidewalk, -4 terrain; -1 sky.
    index = np.where(np.isfinite(depth), -2 - ground_class, -1)
    normals = np.zeros((h * w, 3), dtype=np.float32)
    normals[:, 1] = np.where(np.isfinite(depth), -1.0, 0.0)

    # Front to back, so that solids hidden behind nearer ones are skipped after a cheap test.
    corners = np.array([obj.solid.corners() for obj in scene.objects]).reshape(-1, 8, 3)
    windows, visible = pixel_windows(camera, corners)
    nearest = np.maximum(apply(corners - camera.origin, camera.rotation)[..., 2].min(axis=1), 0)
    for i in np.flatnonzero(visible)[np.argsort(nearest[visible], kind="stable")]:
        pixels = _window_pixels(windows[i], w)
        pixels = pixels[depth[pixels] > nearest[i]]
        if len(pixels) == 0:
            continue
        t, n = scene.objects[i].solid.intersect(origin, rays[pixels])
        closer = t < depth[pixels]
        pixels = pixels[closer]
        depth[pixels] = t[closer]
        index[pixels] = i
        normals[pixels] = n[closer]

    hit = index != -1
    # Negative indices -4..-1 select terrain, sidewalk, road and sky from the tables' tails.
    tail = [LABEL[name] for name in GROUND_CLASSES[::-1]] + [LABEL["sky"]]
    label_table = np.array([o.label_id for o in scene.objects] + tail, dtype=np.int64)
    instance_table = np.array([o.instance_id for o in scene.objects] + tail, dtype=np.int64)
    depth = np.where(hit, depth, 0.0)
    points = origin + depth[:, None] * rays

    image = _shade(scene, corners, index, points, normals, rays, hit)
    drivable, lanes = _drivable_and_lanes(scene, index, points)
    distance = depth * np.sqrt((rays * rays).sum(axis=1))
    fog = np.exp(-distance / scene.haze_distance)[:, None]
    image = np.where(hit[:, None], image * fog + SKY_HORIZON * (1.0 - fog), image)
    image = image * scene.exposure + 0.012 * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    normals = np.where(hit[:, None], camera.to_camera_frame(normals), 0.0)
    return Frame(
        image=image.reshape(h, w, 3),
        label_ids=label_table[index].astype(np.uint8).reshape(h, w),
        instance_ids=instance_table[index].astype(np.uint16).reshape(h, w),
        depth=depth.astype(np.float32).reshape(h, w),
        normals=normals.astype(np.float32).reshape(h, w, 3),
        drivable=drivable.reshape(h, w),
        lanes=lanes.reshape(h, w),
    )


def _shade(
    scene: Scene,
    corners: np.ndarray,
    index: np.ndarray,
    points: np.ndarray,
    normals: np.ndarray,
    rays: np.ndarray,
    hit: np.ndarray,
) -> np.ndarray:
    """RGB in [0, 1] before haze: albedo × (ambient + sun), and the sky gradient (N×3)."""
    objects = scene.objects
    albedo_table = np.array(
        [o.albedo for o in objects] + [TERRAIN, SIDEWALK, ROAD, SKY_ZENITH], dtype=np.float32
    )
    texture_table = np.array(
        [o.texture for o in objects]
        + [Texture.GRASS, Texture.PAVEMENT, Texture.ASPHALT, Texture.PLAIN]
    )
    albedo = albedo_table[index]
    texture = texture_table[index]

    def where(kind: Texture) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        pixels = np.flatnonzero(texture == kind)
        x, y, z = points[pixels].T
        return pixels, x, y, z

    pixels, x, _, z = where(Texture.ASPHALT)
    tone = np.broadcast_to(
        (0.88 + 0.22 * _hash(np.floor(x * 6.0), np.floor(z * 6.0)))[:, None], (len(pixels), 3)
    )
    marks = lane_markings(scene.ground, x, z)
    paint = marks["dashed"] | marks["edge"]
    albedo[pixels] = np.where(paint[:, None], 0.82, albedo[pixels] * tone)

    pixels, x, _, z = where(Texture.PAVEMENT)
    tiles = (np.mod(x, 0.6) < 0.03) | (np.mod(z, 0.6) < 0.03)
    tone = 0.93 + 0.1 * _hash(np.floor(x / 0.6), np.floor(z / 0.6)) - 0.12 * tiles
    kerb = lane_markings(scene.ground, x, z)["kerb"]
    albedo[pixels] = np.where(kerb[:, None], 0.75, albedo[pixels] * tone[:, None])

    pixels, x, _, z = where(Texture.GRASS)
    albedo[pixels] *= (0.75 + 0.45 * _hash(np.floor(x * 3.0), np.floor(z * 3.0)))[:, None]

    pixels, x, y, z = where(Texture.FOLIAGE)
    leaves = _hash(np.floor(x * 4.0) + 57.0 * np.floor(y * 4.0), np.floor(z * 4.0))
    albedo[pixels] *= (0.55 + 0.7 * leaves)[:, None]

    pixels, x, y, z = where(Texture.FACADE)
    along = np.mod(np.where(np.abs(normals[pixels, 0]) > 0.5, z, x), 3.2)
    up = -y
    window = (
        (along > 0.8)
        & (along < 2.4)
        & (np.mod(up, 3.0) > 0.9)
        & (np.mod(up, 3.0) < 2.3)
        & (up > 2.5)
    )
    albedo[pixels[window]] = (0.16, 0.2, 0.26)

    sun = np.asarray(scene.sun, dtype=np.float32)
    lit = np.clip(
        normals[:, 0] * sun[0] + normals[:, 1] * sun[1] + normals[:, 2] * sun[2], 0, None
    ) * _sunlit_ground(scene, corners, index, points)
    image = albedo * (AMBIENT + DIFFUSE * lit)[:, None]

    sky = ~hit
    elevation = np.clip(-rays[sky, 1] / np.sqrt((rays[sky] ** 2).sum(axis=1)), 0.0, 1.0)
    image[sky] = np.clip(
        SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * 1.6 * np.sqrt(elevation)[:, None], 0.0, 1.0
    )
    return image


def _sunlit_ground(
    scene: Scene, corners: np.ndarray, index: np.ndarray, points: np.ndarray
) -> np.ndarray:
    """1 where the ground sees the sun, 0 in the cast shadow of a solid (shadow rays).

    ``corners`` (N×8×3) bound the solids; a solid's shadow on the ground lies in the hull of its
    corners and their projections along the sun onto y = 0.
    """
    camera = scene.camera
    lit = np.ones(len(index), dtype=np.float32)
    ground = index <= -2
    sun = np.asarray(scene.sun)
    shadows = corners - (corners[..., 1:2] / sun[1]) * sun
    windows, visible = pixel_windows(camera, np.concatenate([corners, shadows], axis=1))
    sun = sun.astype(np.float32)
    for i in np.flatnonzero(visible):
        pixels = _window_pixels(windows[i], camera.width)
        pixels = pixels[ground[pixels] & (lit[pixels] > 0)]
        if len(pixels) == 0:
            continue
        t, _ = scene.objects[i].solid.intersect(
            points[pixels], np.broadcast_to(sun, (len(pixels), 3))
        )
        lit[pixels[np.isfinite(t)]] = 0.0
    return lit
