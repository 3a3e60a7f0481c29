"""Ray intersection with the solids SynthDrive scenes are made of, vectorised over rays.

Every ``intersect(origins, dirs)`` takes origins (3,) or N×3 and directions N×3 in the level
frame (y down, ground at y = 0) and returns the ray parameter of the first hit in front of the
origin (``inf`` where the ray misses) and the outward unit normal there (N×3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from adperception.data.synth.camera import apply

EPS = 1e-6


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass(frozen=True)
class Box:
    """A box with half extents ``half`` (x, y, z), turned by ``yaw`` about the vertical axis."""

    center: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float = 0.0

    def corners(self) -> np.ndarray:
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        return apply(signs * np.asarray(self.half), _yaw_matrix(self.yaw).T) + np.asarray(
            self.center
        )

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Slab test in the box frame, one column at a time (3-wide rows make reductions slow).
        c, s = math.cos(self.yaw), math.sin(self.yaw)  # Python floats keep float32 float32
        rel = np.broadcast_to(origins - np.asarray(self.center, dirs.dtype), dirs.shape)
        o = (c * rel[:, 0] - s * rel[:, 2], rel[:, 1], s * rel[:, 0] + c * rel[:, 2])
        d = (c * dirs[:, 0] - s * dirs[:, 2], dirs[:, 1], s * dirs[:, 0] + c * dirs[:, 2])
        t_in, t_out = [], []
        with np.errstate(divide="ignore", invalid="ignore"):
            for oa, da, half in zip(o, d, self.half, strict=True):
                inv = 1.0 / da
                t1, t2 = (-half - oa) * inv, (half - oa) * inv
                t_in.append(np.minimum(t1, t2))
                t_out.append(np.maximum(t1, t2))
        t_near = np.maximum(np.maximum(t_in[0], t_in[1]), t_in[2])
        t_far = np.minimum(np.minimum(t_out[0], t_out[1]), t_out[2])
        hit = (t_near <= t_far) & (t_near > EPS)
        # The entry face is the slab whose entry parameter is the largest.
        nx = np.where(t_in[0] == t_near, -np.sign(d[0]), 0.0)
        ny = np.where((t_in[1] == t_near) & (nx == 0), -np.sign(d[1]), 0.0)
        nz = np.where((nx == 0) & (ny == 0), -np.sign(d[2]), 0.0)
        normals = np.stack([c * nx + s * nz, ny, -s * nx + c * nz], axis=1).astype(dirs.dtype)
        return np.where(hit, t_near, np.inf), normals


@dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]
    radius: float

    def corners(self) -> np.ndarray:
        return Box(self.center, (self.radius,) * 3).corners()

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        oc = origins - np.asarray(self.center, dirs.dtype)
        a = np.einsum("ij,ij->i", dirs, dirs)
        b = (dirs * oc).sum(axis=-1)
        c = (oc * oc).sum(axis=-1) - self.radius**2
        disc = b * b - a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        hit = (disc >= 0) & (t > EPS)
        t = np.where(hit, t, np.inf)
        points = origins + np.where(hit, t, 0.0)[:, None] * dirs
        normals = points - np.asarray(self.center, dirs.dtype)
        # Normalised rather than divided by the radius: float32 hits are not exactly on it.
        return t, normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Cylinder:
    """A vertical cylinder standing on ``base`` (x, y, z) with its top ``length`` metres above."""

    base: tuple[float, float, float]
    radius: float
    length: float

    def corners(self) -> np.ndarray:
        x, y, z = self.base
        return Box(
            (x, y - self.length / 2, z), (self.radius, self.length / 2, self.radius)
        ).corners()

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x0, y_bottom, z0 = self.base
        y_top = y_bottom - self.length
        origins = np.broadcast_to(origins, dirs.shape)
        ox, oy, oz = origins[:, 0] - x0, origins[:, 1], origins[:, 2] - z0
        dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
        a = dx * dx + dz * dz
        b = dx * ox + dz * oz
        c = ox * ox + oz * oz - self.radius**2
        disc = b * b - a * c
        with np.errstate(divide="ignore", invalid="ignore"):
            t_side = (-b - np.sqrt(disc)) / a
            y_side = oy + t_side * dy
            side = (disc >= 0) & (t_side > EPS) & (y_side >= y_top) & (y_side <= y_bottom)
            t_cap = (y_top - oy) / dy
            cap_x, cap_z = ox + t_cap * dx, oz + t_cap * dz
            cap = (t_cap > EPS) & (cap_x * cap_x + cap_z * cap_z <= self.radius**2)
        t_side = np.where(side, t_side, np.inf)
        t_cap = np.where(cap, t_cap, np.inf)
        use_cap = t_cap < t_side
        t = np.minimum(t_side, t_cap)
        normals = np.zeros_like(dirs)
        hit_side = np.isfinite(t) & ~use_cap
        t_hit = np.where(hit_side, t, 0.0)
        normals[:, 0] = np.where(hit_side, (ox + t_hit * dx) / self.radius, 0.0)
        normals[:, 2] = np.where(hit_side, (oz + t_hit * dz) / self.radius, 0.0)
        normals[:, 1] = np.where(use_cap, -1.0, 0.0)
        return t, normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)


Solid = Box | Sphere | Cylinder
