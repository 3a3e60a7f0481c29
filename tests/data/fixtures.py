"""Tiny dataset trees in the official on-disk layouts, written to a test's tmp_path.

Contents are painted so that tests can state the expected decoding independently: every
Cityscapes label id, known instance rectangles, known disparity codes and unit normals.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adperception.data import formats

H, W = 32, 48
CITY = "aachen"
BASELINE, FX = 0.209313, 2262.52
ALL_KINDS = (
    formats.IMAGE_SUFFIX,
    formats.LABEL_IDS_SUFFIX,
    formats.INSTANCE_IDS_SUFFIX,
    formats.DISPARITY_SUFFIX,
    formats.CAMERA_SUFFIX,
    formats.NORMALS_SUFFIX,
)

#: (instanceIds value, rows slice, cols slice) painted in order; later ones occlude earlier ones.
INSTANCES = (
    (26001, slice(2, 6), slice(3, 9)),  # car
    (24000, slice(8, 13), slice(10, 12)),  # person, k = 0
    (26002, slice(14, 16), slice(20, 24)),  # car, two visible pieces ...
    (26002, slice(18, 20), slice(30, 33)),  # ... one box over both
    (33005, slice(22, 30), slice(40, 47)),  # bicycle
    (26, slice(24, 28), slice(2, 8)),  # car group (crowd): no box
    (29001, slice(2, 5), slice(30, 36)),  # caravan: an instance class outside the 8
)
#: A region a reader must skip but the checker reports: road (no instances) with an id >= 1000.
NON_INSTANCE_CLASS = (7001, slice(28, 31), slice(12, 20))
#: The boxes and class indices the instances above must give, sorted by instance value.
EXPECTED_BOXES = np.array(
    [[10, 8, 12, 13], [3, 2, 9, 6], [20, 14, 33, 20], [40, 22, 47, 30]], dtype=np.float32
)
EXPECTED_BOX_LABELS = np.array([0, 2, 2, 7])


@dataclass
class CityscapesSample:
    """One sample's arrays as written to disk."""

    image: np.ndarray
    label_ids: np.ndarray
    instance_ids: np.ndarray
    disparity: np.ndarray
    camera: dict
    normals: np.ndarray
    paths: dict[str, str] = field(default_factory=dict)


def make_cityscapes_sample(seed: int) -> CityscapesSample:
    rng = np.random.default_rng(seed)
    label_ids = rng.integers(0, 34, size=(H, W)).astype(np.uint8)
    label_ids.flat[:34] = np.arange(34)
    instance_ids = label_ids.astype(np.uint16)
    for value, rows, cols in INSTANCES:
        instance_ids[rows, cols] = value
    disparity = rng.integers(2, 65536, size=(H, W)).astype(np.uint16)
    disparity[::5, ::7] = 0
    normals = rng.normal(size=(H, W, 3))
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    normals[3::6, 4::9] = 0
    camera = {
        "extrinsic": {"baseline": BASELINE, "pitch": 0.04, "roll": 0.0, "x": 1.7, "y": 0.1,
                      "yaw": 0.0, "z": 1.2},
        "intrinsic": {"fx": FX, "fy": 2265.3, "u0": 1048.6, "v0": 519.3},
    }  # fmt: skip
    return CityscapesSample(
        image=rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8),
        label_ids=label_ids,
        instance_ids=instance_ids,
        disparity=disparity,
        camera=camera,
        normals=normals,
    )


def cityscapes_path(root: Path, split: str, stem: str, suffix: str, city: str = CITY) -> str:
    return os.path.join(root, formats.FOLDERS[suffix], split, city, stem + suffix)


def write_cityscapes_sample(
    root: Path, split: str, stem: str, sample: CityscapesSample, kinds=ALL_KINDS, city: str = CITY
) -> CityscapesSample:
    arrays = {
        formats.IMAGE_SUFFIX: sample.image,
        formats.LABEL_IDS_SUFFIX: sample.label_ids,
        formats.INSTANCE_IDS_SUFFIX: sample.instance_ids,
        formats.DISPARITY_SUFFIX: sample.disparity,
        formats.NORMALS_SUFFIX: formats.encode_normals_png(sample.normals),
    }
    for suffix in kinds:
        path = cityscapes_path(root, split, stem, suffix, city)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if suffix == formats.CAMERA_SUFFIX:
            formats.write_bytes_atomic(path, json.dumps(sample.camera).encode())
        else:
            formats.write_png(path, arrays[suffix])
        sample.paths[suffix] = path
    return sample


def write_cityscapes_tree(
    root: Path, *, split: str = "train", num: int = 2, kinds=ALL_KINDS, city: str = CITY
) -> list[CityscapesSample]:
    """``num`` samples with stems ``{city}_000000_{i:06d}``, in stem order."""
    return [
        write_cityscapes_sample(
            root, split, f"{city}_000000_{i:06d}", make_cityscapes_sample(i), kinds, city
        )
        for i in range(num)
    ]


def write_nyuv2_tree(root: Path, *, split: str = "train", num: int = 2) -> list[dict]:
    """``num`` samples ``{i}.npy`` in the literature's dtypes and shapes (depth H×W×1)."""
    samples = []
    for i in range(num):
        rng = np.random.default_rng(100 + i)
        label = rng.integers(-1, 13, size=(H, W)).astype(np.float32)
        normal = rng.uniform(-1, 1, size=(H, W, 3)).astype(np.float32)
        normal[0, :5] = 0
        depth = rng.uniform(0.5, 10.0, size=(H, W, 1)).astype(np.float32)
        depth[1, :4] = 0
        sample = dict(
            image=rng.uniform(0, 1, size=(H, W, 3)).astype(np.float32),
            label=label,
            depth=depth,
            normal=normal,
        )
        for folder, array in sample.items():
            os.makedirs(os.path.join(root, split, folder), exist_ok=True)
            np.save(os.path.join(root, split, folder, f"{i}.npy"), array)
        samples.append(sample)
    return samples


def truncate(path: str) -> None:
    """Cut a file to half its size, as an interrupted copy leaves it."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
