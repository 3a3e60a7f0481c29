"""A tiny BDD100K tree in the official layout, written from the format's documentation
(https://doc.bdd100k.com/format.html), not by the reader's own code: real JPEG images, a
Scalabel det json of plain dicts, and 8-bit masks whose values are the documented codes.

Train split: image A has every label, image B has det (``labels: null``), drivable and lanes
but no sem_seg mask, image C has no label at all. One sem_seg mask belongs to a 10K image that
the 100K set lacks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 24, 40
STEM_A, STEM_B, STEM_C = "b1c66a42-6f7d68ca", "b1c81faa-3df17267", "b1d0091f-75824d0d"
#: A sem_seg mask of the 10K images, without a 100K image of that name.
STEM_10K_ONLY = "7d2f7975-e0c1c5a7"

#: Lane codes, one byte per pixel, bits ``- - d s b c c c`` from the high bit down
#: (format.rst "Lane Marking"; bdd100k/eval/lane.py): d = direction (0 parallel, 1 vertical),
#: s = style (0 solid, 1 dashed), b = background (1), c = category index
#: (0 crosswalk, 1 double other, 2 double white, 3 double yellow, 4 road curb, 5 single other,
#: 6 single white, 7 single yellow). bdd100k's writer fills the background with 255.
LANE_BACKGROUND = 0b11111111  # 255
LANE_BACKGROUND_ONLY_BIT = 0b00001000  # 8: the background bit alone is background too
LANE_DASHED_VERTICAL_DOUBLE_YELLOW = 0b00110011  # 32 + 16 + 3 = 51
LANE_SOLID_PARALLEL_ROAD_CURB = 0b00000100  # 4
LANE_SOLID_PARALLEL_CROSSWALK = 0b00000000  # 0 is a lane pixel, not background
LANE_DASHED_PARALLEL_SINGLE_WHITE = 0b00010110  # 16 + 6 = 22
LANE_SOLID_VERTICAL_SINGLE_YELLOW = 0b00100111  # 32 + 7 = 39
#: (code, rows, cols) painted on image A's lane mask, and the expected map value
#: (0 = no lane, 2 + category index) and fields (direction, style, category).
LANE_PAINT = (
    (LANE_DASHED_VERTICAL_DOUBLE_YELLOW, slice(2, 4), slice(0, 40), 5, (1, 1, 3)),
    (LANE_SOLID_PARALLEL_ROAD_CURB, slice(5, 24), slice(1, 2), 6, (0, 0, 4)),
    (LANE_SOLID_PARALLEL_CROSSWALK, slice(10, 12), slice(10, 30), 2, (0, 0, 0)),
    (LANE_DASHED_PARALLEL_SINGLE_WHITE, slice(14, 24), slice(20, 21), 8, (0, 1, 6)),
    (LANE_SOLID_VERTICAL_SINGLE_YELLOW, slice(20, 22), slice(30, 38), 9, (1, 0, 7)),
    (LANE_BACKGROUND_ONLY_BIT, slice(0, 1), slice(0, 5), 0, (2, 2, 8)),
)

#: Image A's det labels as a det_20 json holds them (box2d x2, y2 inclusive), and the boxes
#: the reader must give (pixel-edge xyxy: x2 + 1, y2 + 1, clipped to the 24x40 image).
DET_LABELS_A = [
    {"category": "car", "box2d": {"x1": 2, "y1": 3, "x2": 11, "y2": 8}},
    {"category": "traffic light", "box2d": {"x1": 30.5, "y1": 0.0, "x2": 39.6, "y2": 4.25}},
    {"category": "other vehicle", "box2d": {"x1": 0, "y1": 0, "x2": 5, "y2": 5}},  # ignored
    {"category": "trailer", "box2d": {"x1": 1, "y1": 1, "x2": 5, "y2": 5}},  # ignored
    {"category": "pedestrian", "box2d": {"x1": 20, "y1": 10, "x2": 20, "y2": 23}},
    {"category": "car", "attributes": {"crowd": True},  # a crowd box: ignored
     "box2d": {"x1": 3, "y1": 3, "x2": 9, "y2": 9}},
    {"category": "lane",  # a 2018-release poly2d region: no box
     "poly2d": [{"vertices": [[0, 20], [39, 20]], "types": "LL", "closed": False}]},
    {"category": "bicycle", "box2d": {"x1": 0, "y1": 12.5, "x2": 7, "y2": 22}},
    {"category": "traffic sign", "box2d": {"x1": 33, "y1": 6, "x2": 38, "y2": 9}},
]  # fmt: skip
EXPECTED_BOXES_A = np.array(
    [[2, 3, 12, 9], [30.5, 0, 40, 5.25], [20, 10, 21, 24], [0, 12.5, 8, 23], [33, 6, 39, 10]],
    dtype=np.float32,
)
EXPECTED_LABELS_A = np.array([2, 8, 0, 7, 9])  # car, traffic light, pedestrian, bicycle, sign


def image(seed: int) -> np.ndarray:
    """Smooth, so that JPEG keeps it within a few levels: red grows along x, green along y."""
    rows, cols = np.mgrid[0:H, 0:W]
    blue = np.full((H, W), 40 + 60 * seed)
    return np.stack([cols * 6, rows * 10, blue], axis=-1).astype(np.uint8)


def drivable_mask() -> np.ndarray:
    """0 = direct (lower left), 1 = alternative (lower right), 2 = background."""
    mask = np.full((H, W), 2, np.uint8)
    mask[16:, :20] = 0
    mask[16:, 20:] = 1
    return mask


def lane_mask() -> np.ndarray:
    mask = np.full((H, W), LANE_BACKGROUND, np.uint8)
    for code, rows, cols, _, _ in LANE_PAINT:
        mask[rows, cols] = code
    return mask


def expected_lane_map() -> np.ndarray:
    expected = np.zeros((H, W), np.int64)
    for _, rows, cols, value, _ in LANE_PAINT:
        expected[rows, cols] = value
    return expected


def seg_mask() -> np.ndarray:
    """Every train id 0..18 and 255 (ignore)."""
    mask = (np.arange(H * W) % 20).reshape(H, W).astype(np.uint8)
    mask[mask == 19] = 255
    return mask


def frame(name: str, labels: list | None) -> dict:
    """A det_20 frame as doc/format.rst lists its fields."""
    return {
        "name": name,
        "attributes": {"weather": "clear", "scene": "city street", "timeofday": "daytime"},
        "timestamp": 10000,
        "labels": None
        if labels is None
        else [
            {"id": str(i), "attributes": {"occluded": False, "truncated": False}, **label}
            for i, label in enumerate(labels)
        ],
    }


def paths(root: Path, split: str = "train") -> dict[str, str]:
    """Where the official layout keeps each file of the fixture."""
    return {
        "image_dir": str(root / "images" / "100k" / split),
        "det": str(root / "labels" / "det_20" / f"det_{split}.json"),
        "drivable_dir": str(root / "labels" / "drivable" / "masks" / split),
        "lane_dir": str(root / "labels" / "lane" / "masks" / split),
        "seg_dir": str(root / "labels" / "sem_seg" / "masks" / split),
    }


def write_png(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def write_jpeg(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95)


def write_json(path: str, frames: object) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(frames, f)


def write_bdd100k_tree(root: Path, split: str = "train") -> dict[str, str]:
    """Images A, B, C and their labels (see the module docstring): file key -> path."""
    p = paths(root, split)
    files = {
        "image_a": os.path.join(p["image_dir"], STEM_A + ".jpg"),
        "image_b": os.path.join(p["image_dir"], STEM_B + ".jpg"),
        "image_c": os.path.join(p["image_dir"], STEM_C + ".jpg"),
        "det": p["det"],
        "drivable_a": os.path.join(p["drivable_dir"], STEM_A + ".png"),
        "drivable_b": os.path.join(p["drivable_dir"], STEM_B + ".png"),
        "lane_a": os.path.join(p["lane_dir"], STEM_A + ".png"),
        "lane_b": os.path.join(p["lane_dir"], STEM_B + ".png"),
        "seg_a": os.path.join(p["seg_dir"], STEM_A + ".png"),
        "seg_10k_only": os.path.join(p["seg_dir"], STEM_10K_ONLY + ".png"),
    }
    for i, key in enumerate(("image_a", "image_b", "image_c")):
        write_jpeg(files[key], image(i))
    write_json(files["det"], [frame(STEM_A + ".jpg", DET_LABELS_A), frame(STEM_B + ".jpg", None)])
    write_png(files["drivable_a"], drivable_mask())
    write_png(files["drivable_b"], np.full((H, W), 2, np.uint8))
    write_png(files["lane_a"], lane_mask())
    write_png(files["lane_b"], np.full((H, W), LANE_BACKGROUND, np.uint8))
    write_png(files["seg_a"], seg_mask())
    write_png(files["seg_10k_only"], seg_mask())
    return files
