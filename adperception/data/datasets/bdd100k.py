"""BDD100K in its official layout (https://doc.bdd100k.com/download.html), read for detection,
drivable area, lane marking and semantic segmentation::

    {root}/images/100k/{split}/{stem}.jpg
    {root}/labels/det_20/det_{split}.json         Scalabel frames with box2d labels
    {root}/labels/drivable/masks/{split}/{stem}.png
    {root}/labels/lane/masks/{split}/{stem}.png
    {root}/labels/sem_seg/masks/{split}/{stem}.png

Encodings, per https://doc.bdd100k.com/format.html and bdd100k's ``label/label.py``,
``label/to_mask.py``, ``eval/lane.py`` and ``configs/det.toml`` (github.com/bdd100k/bdd100k):

- box2d: x1..x2 and y1..y2 are the first and last pixel, inclusive (bdd100k converts to COCO
  with w = x2 - x1 + 1), so the pixel-edge box is [x1, y1, x2 + 1, y2 + 1].
- drivable mask: 0 = direct, 1 = alternative, 2 = background. (The 2018 ``drivable_maps``
  release, 0 = background, has other paths and is not read.)
- lane mask: one byte per pixel, ``- - d s b c c c`` from the high bit down: bit 5 direction
  (0 parallel, 1 vertical), bit 4 style (0 solid, 1 dashed), bit 3 background (1 = no lane),
  bits 0-2 the category index into ``LANE_CLASSES``; bits 6-7 are unused (the writer leaves them
  0 on lane pixels and writes 255 on the background).
- sem_seg mask: the 19 Cityscapes train ids, 255 = ignore.

Labels are partial: the 10K sem_seg images are not a subset of the 100K images, so only some
100K images have a sem_seg mask (matched by stem within the split; the others are ignored),
and a frame missing from the det json has no det label.
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import NamedTuple

import numpy as np
from PIL import Image

from adperception.data.bdd100k_format import (
    DRIVABLE_CLASSES,
    LANE_CLASSES,
    _values_error,
    decode_lane_mask,
    lane_map,
    read_drivable_mask,
    read_lane_mask,
)
from adperception.data.datasets.base import MTLDataset, check_size, require_dir
from adperception.data.datasets.cityscapes import SEG_CLASSES, SEG_PALETTE
from adperception.data.formats import DataFileError, read_png
from adperception.registry import DATASETS

IMAGE_DIR = os.path.join("images", "100k")
DET_DIR = os.path.join("labels", "det_20")
#: Sample dict key of each mask kind -> its folder under the root, then ``{split}/{stem}.png``.
MASK_DIRS = {
    "drivable_path": os.path.join("labels", "drivable", "masks"),
    "lane_path": os.path.join("labels", "lane", "masks"),
    "seg_path": os.path.join("labels", "sem_seg", "masks"),
}
TASK_OF_KIND = {"drivable_path": "drivable", "lane_path": "lanes", "seg_path": "seg"}

DET_CLASSES = (
    "pedestrian",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
    "traffic light",
    "traffic sign",
)
#: Names of the 2018 release that configs/det.toml's name_mapping folds into DET_CLASSES.
DET_NAME_MAPPING = {
    "bike": "bicycle",
    "caravan": "car",
    "motor": "motorcycle",
    "person": "pedestrian",
    "van": "car",
}
#: configs/det.toml's ignored_mapping: boxes the evaluation ignores. The contract has no ignore
#: flag, so they give no box, as crowd boxes do (and Cityscapes' crowd regions).
IGNORED_CATEGORIES = ("other person", "other vehicle", "trailer")
#: poly2d regions of the 2018 labels json (doc/format.md), not boxes; their masks are read instead.
REGION_CATEGORIES = ("drivable area", "lane")
IGNORE_INDEX = 255


class DetFrame(NamedTuple):
    """One det json frame: its image name, box2d values as written (float64 N×4 inclusive
    x1, y1, x2, y2) and DET_CLASSES indices."""

    name: str
    boxes: np.ndarray
    labels: np.ndarray


def split_paths(root: str, split: str) -> tuple[str, str, dict[str, str]]:
    """``(image folder, det json, {mask key: mask folder})`` of one split."""
    masks = {key: os.path.join(root, folder, split) for key, folder in MASK_DIRS.items()}
    return (
        os.path.join(root, IMAGE_DIR, split),
        os.path.join(root, DET_DIR, f"det_{split}.json"),
        masks,
    )


def scan_split(root: str, split: str) -> dict[str, dict[str, str]]:
    """Existing image and mask files of one split: ``stem -> {kind key: path}``, sorted by stem.

    Masks without an image are kept (the checker reports drivable and lane ones).
    """
    image_dir, _, mask_dirs = split_paths(root, split)
    found: dict[str, dict[str, str]] = {}
    for key, folder, ext in [("img_path", image_dir, ".jpg")] + [
        (key, folder, ".png") for key, folder in mask_dirs.items()
    ]:
        for path in glob.glob(os.path.join(folder, "*" + ext)):
            found.setdefault(os.path.basename(path)[: -len(ext)], {})[key] = path
    return dict(sorted(found.items()))


def read_image(path: str) -> np.ndarray:
    """uint8 H×W×3 RGB of a JPEG.

    Decoded by Pillow, which refuses a truncated file (OpenCV would fill the rest with grey).
    """
    if not os.path.isfile(path):
        raise DataFileError(f"{path}: file is missing")
    if os.path.getsize(path) == 0:
        raise DataFileError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()
            kind, mode, array = image.format, image.mode, np.array(image)  # writable
    except OSError as err:
        raise DataFileError(
            f"{path}: cannot be decoded as JPEG (truncated or corrupt: {err})"
        ) from None
    if kind != "JPEG":
        raise DataFileError(f"{path}: content is {kind}, not JPEG as its name says")
    if mode != "RGB":
        raise DataFileError(f"{path}: expected an RGB JPEG, found mode {mode}")
    return array


def read_seg_mask(path: str, image_shape: tuple[int, int] | None) -> np.ndarray:
    """int64 H×W train ids 0..18, 255 = ignore."""
    code = read_png(path, channels=1, dtype=np.uint8)
    check_size(path, code, image_shape)
    bad = (code >= len(SEG_CLASSES)) & (code != IGNORE_INDEX)
    if bad.any():
        raise _values_error(path, code[bad], f"the train ids 0..{len(SEG_CLASSES) - 1} and 255")
    return code.astype(np.int64)


def _number(path: str, where: str, box2d: dict, key: str) -> float:
    value = box2d.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataFileError(f"{path}: {where}: box2d.{key} must be a number, found {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise DataFileError(f"{path}: {where}: box2d.{key} must be finite, found {number}")
    return number


def parse_det_frame(path: str, index: int, frame: object) -> DetFrame:
    """The boxes of one frame of the det json ``path``; DataFileError naming the file and frame.

    Labels of IGNORED_CATEGORIES, REGION_CATEGORIES and crowd boxes give no box; any other
    category outside DET_CLASSES and DET_NAME_MAPPING is an error.
    """
    if not isinstance(frame, dict) or not isinstance(frame.get("name"), str) or not frame["name"]:
        raise DataFileError(f"{path}: frame {index} has no 'name' (the image file name)")
    name = frame["name"]
    labels = frame.get("labels")
    if labels is None:
        labels = []
    if not isinstance(labels, list):
        raise DataFileError(f"{path}: frame {index} ({name!r}): 'labels' must be a list or null")
    boxes, classes = [], []
    for j, label in enumerate(labels):
        where = f"frame {index} ({name!r}), label {j}"
        category = label.get("category") if isinstance(label, dict) else None
        if not isinstance(category, str):
            raise DataFileError(f"{path}: {where}: no 'category'")
        category = DET_NAME_MAPPING.get(category, category)
        if category in IGNORED_CATEGORIES or category in REGION_CATEGORIES:
            continue
        if category not in DET_CLASSES:
            raise DataFileError(
                f"{path}: {where}: unknown category {category!r}, not a BDD100K category"
            )
        attributes = label.get("attributes")
        if isinstance(attributes, dict) and attributes.get("crowd") is True:
            continue
        box2d = label.get("box2d")
        if not isinstance(box2d, dict):
            raise DataFileError(f"{path}: {where}: {category!r} without a 'box2d'")
        x1, y1, x2, y2 = (_number(path, where, box2d, key) for key in ("x1", "y1", "x2", "y2"))
        if x2 < x1 or y2 < y1:
            raise DataFileError(
                f"{path}: {where}: box2d has x2 < x1 or y2 < y1 ({x1}, {y1}, {x2}, {y2})"
            )
        boxes.append((x1, y1, x2, y2))
        classes.append(DET_CLASSES.index(category))
    return DetFrame(name, np.array(boxes, np.float64).reshape(-1, 4), np.array(classes, np.int64))


def read_det_frames(
    path: str, image_dir: str, errors: list[DataFileError] | None = None
) -> dict[str, DetFrame]:
    """``image path -> frame`` of the det json ``path``, whose frames name images of ``image_dir``.

    Raises DataFileError for a bad file, a bad frame, a repeated frame or a frame naming an
    image that does not exist; with ``errors``, a bad frame is appended there and skipped
    instead, so that the checker lists them all.
    """
    try:
        with open(path, encoding="utf-8") as f:
            frames = json.load(f)
    except FileNotFoundError:
        raise DataFileError(f"{path}: file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFileError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(frames, list):
        raise DataFileError(
            f"{path}: expected a JSON list of frames, found {type(frames).__name__}"
        )
    found: dict[str, DetFrame] = {}
    for index, raw in enumerate(frames):
        try:
            frame = parse_det_frame(path, index, raw)
            image = os.path.join(image_dir, frame.name)
            if image in found:
                raise DataFileError(
                    f"{path}: frame {index} ({frame.name!r}) repeats an earlier one"
                )
            if not os.path.isfile(image):
                raise DataFileError(
                    f"{path}: frame {index} ({frame.name!r}) names {image}, which does not exist"
                )
        except DataFileError as err:
            if errors is None:
                raise
            errors.append(err)
            continue
        found[image] = frame
    return found


def det_targets(
    path: str, frame: DetFrame, image_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """float32 N×4 pixel-edge boxes [x1, y1, x2 + 1, y2 + 1] clipped to the image, and labels.

    A box whose values leave [0, W]×[0, H] (the image's extent whether its x2, y2 are read as
    inclusive pixels or as edges) is a DataFileError naming the json and the frame.
    """
    h, w = image_shape
    boxes = frame.boxes
    outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > w) | (boxes[:, 3] > h)
    if outside.any():
        j = int(np.argmax(outside))
        raise DataFileError(
            f"{path}: frame {frame.name!r}: {int(outside.sum())} box(es) outside the {h}x{w} "
            f"image, e.g. {boxes[j].tolist()}"
        )
    edges = boxes + np.array([0.0, 0.0, 1.0, 1.0])
    edges = np.clip(edges, 0.0, np.array([w, h, w, h], np.float64))
    return edges.astype(np.float32), frame.labels.copy()


@DATASETS.register_module()
class BDD100KMTL(MTLDataset):
    """BDD100K (official layout) for detection, drivable area, lane marking and segmentation.

    Labels are partial: ``tasks`` is every task that any image of the split has, and a sample
    carries only the targets it has files for. Every image of the split is a sample, even one
    without any label (it may be used unlabeled, e.g. the test split). A det json frame naming a
    missing image is an error; masks without an image are ignored.
    """

    METAINFO = dict(
        classes=SEG_CLASSES,
        palette=SEG_PALETTE,
        det_classes=DET_CLASSES,
        drivable_classes=DRIVABLE_CLASSES,
        lane_classes=LANE_CLASSES,
    )

    def __init__(self, *, data_root: str = "data/bdd100k", split: str = "train", **kwargs):
        self.split = split
        super().__init__(data_root=data_root, **kwargs)

    def load_data_list(self) -> list[dict]:
        image_dir, det_path, _ = split_paths(self.data_root, self.split)
        require_dir(image_dir, f"the split '{self.split}' image")
        samples = [
            files
            for files in scan_split(self.data_root, self.split).values()
            if "img_path" in files
        ]
        if not samples:
            raise DataFileError(f"{image_dir}: no *.jpg files")
        frames = read_det_frames(det_path, image_dir) if os.path.exists(det_path) else {}
        for files in samples:
            frame = frames.get(files["img_path"])
            if frame is not None:
                files.update(
                    det_path=det_path,
                    det_frame=frame.name,
                    det_boxes=frame.boxes,
                    det_labels=frame.labels,
                )
        has = {key for files in samples for key in files}
        tasks = ["det"] if "det_path" in has else []
        self._tasks = tuple(tasks + [task for key, task in TASK_OF_KIND.items() if key in has])
        return samples

    def get_raw_sample(self, idx: int) -> dict:
        info, sample = self.image_sample(idx, read_image)
        shape = sample["img_shape"]
        if "det_path" in info:
            frame = DetFrame(info["det_frame"], info["det_boxes"], info["det_labels"])
            sample["gt_bboxes"], sample["gt_bboxes_labels"] = det_targets(
                info["det_path"], frame, shape
            )
        if "drivable_path" in info:
            sample["gt_drivable_map"] = read_drivable_mask(info["drivable_path"], shape)
        if "lane_path" in info:
            code = read_lane_mask(info["lane_path"], shape)
            sample["gt_lane_map"] = lane_map(decode_lane_mask(code))
        if "seg_path" in info:
            sample["gt_seg_map"] = read_seg_mask(info["seg_path"], shape)
        return sample
