"""The SynthDrive camera: Cityscapes' left camera scaled to the rendered resolution.

Frames: the *camera* frame is x right, y down, z forward (the data contract's normals frame);
the *level* frame is the camera frame with pitch and yaw undone, origin on the ground below the
camera, so the ground is the plane y = 0 and "up" is -y. Scenes are built in the level frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Cityscapes' camera (a typical *_camera.json of the train split), at 2048×1024.
CITYSCAPES_SIZE = (2048, 1024)
CITYSCAPES_INTRINSIC = dict(fx=2262.52, fy=2265.3017905988554, u0=1096.98, v0=513.137)
CITYSCAPES_BASELINE = 0.209313
CITYSCAPES_HEIGHT = 1.22
CITYSCAPES_PITCH = 0.038


def apply(vectors: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``vectors @ matrix`` for …×3 rows; einsum, because a BLAS call on 3-wide rows is slow."""
    return np.einsum("...i,ij->...j", vectors, matrix)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera at ``height`` metres above the ground, pitched down by ``pitch`` rad."""

    width: int
    height: int
    fx: float
    fy: float
    u0: float
    v0: float
    mount_height: float = CITYSCAPES_HEIGHT
    pitch: float = CITYSCAPES_PITCH
    yaw: float = 0.0
    baseline: float = CITYSCAPES_BASELINE
    rotation: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cp, sp = np.cos(self.pitch), np.sin(self.pitch)
        cy, sy = np.cos(self.yaw), np.sin(self.yaw)
        pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
        yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
        object.__setattr__(self, "rotation", yaw @ pitch)

    @classmethod
    def cityscapes(
        cls, width: int, height: int, *, pitch: float = CITYSCAPES_PITCH, yaw: float = 0.0
    ) -> Camera:
        """Cityscapes' intrinsics scaled from 2048×1024 to ``width``×``height``."""
        sx, sy = width / CITYSCAPES_SIZE[0], height / CITYSCAPES_SIZE[1]
        k = CITYSCAPES_INTRINSIC
        return cls(
            width=width,
            height=height,
            fx=k["fx"] * sx,
            fy=k["fy"] * sy,
            u0=k["u0"] * sx,
            v0=k["v0"] * sy,
            pitch=pitch,
            yaw=yaw,
        )

    @property
    def origin(self) -> np.ndarray:
        """Camera centre in the level frame."""
        return np.array([0.0, -self.mount_height, 0.0])

    def rays(self) -> np.ndarray:
        """H×W×3 level-frame ray directions scaled so that ray(t) has camera depth z = t.

        Pixel (row v, column u) looks along camera direction ((u - u0)/fx, (v - v0)/fy, 1): pixel
        centres sit on integer coordinates, as in OpenCV and Cityscapes' calibration.
        """
        u = ((np.arange(self.width) - self.u0) / self.fx)[None, :]
        v = ((np.arange(self.height) - self.v0) / self.fy)[:, None]
        r = self.rotation.tolist()
        return np.stack([r[k][0] * u + r[k][1] * v + r[k][2] for k in range(3)], axis=-1)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Level-frame points (N×3) to pixel columns, rows and camera depths."""
        cam = apply(points - self.origin, self.rotation)
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.fx * cam[:, 0] / z + self.u0, self.fy * cam[:, 1] / z + self.v0, z

    def to_camera_frame(self, vectors: np.ndarray) -> np.ndarray:
        """Rotate level-frame direction vectors (…×3) into the camera frame."""
        r = self.rotation.tolist()  # Python floats keep float32 vectors float32
        return np.stack([sum(vectors[..., i] * r[i][k] for i in range(3)) for k in range(3)], -1)

    def to_json(self) -> dict:
        """The sample's ``*_camera.json`` in Cityscapes' schema."""
        return {
            "extrinsic": {
                "baseline": self.baseline,
                "pitch": self.pitch,
                "roll": 0.0,
                "x": 1.7,
                "y": 0.0,
                "yaw": self.yaw,
                "z": self.mount_height,
            },
            "intrinsic": {"fx": self.fx, "fy": self.fy, "u0": self.u0, "v0": self.v0},
        }
