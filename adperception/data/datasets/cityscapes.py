"""Cityscapes in its official layout (plus our ``normals/`` folder and the folders of the tasks
that declare a file in this layout, ``Task.layout_files``), read for every task it has files of.

``{root}/{folder}/{split}/{city}/{stem}{suffix}`` with the folders and suffixes of
``adperception.data.formats``. Label ids map to the 19 train ids and boxes come from instanceIds,
both through cityscapesscripts' label table.
"""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np
from cityscapesscripts.helpers.labels import labels, name2label

from adperception.data import formats
from adperception.data.datasets.base import (
    MTLDataset,
    check_size,
    missing_files_error,
    require_dir,
)
from adperception.data.formats import DataFileError, read_png
from adperception.registry import DATASETS
from adperception.tasks.base import layout_files

SEG_CLASSES: tuple[str, ...] = tuple(
    label.name for label in sorted(labels, key=lambda x: x.trainId) if 0 <= label.trainId < 255
)
SEG_PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    tuple(name2label[name].color) for name in SEG_CLASSES
)
DET_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
IGNORE_INDEX = 255
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).smallest_subnormal)

#: label id -> train id (255 = ignore), over every 8-bit value.
TRAIN_ID_LUT = np.full(256, IGNORE_INDEX, dtype=np.int64)
#: label ids that cityscapesscripts' table defines (license plate's -1 never occurs in a PNG).
KNOWN_LABEL_IDS = np.zeros(256, dtype=bool)
for _label in labels:
    if _label.id >= 0:
        TRAIN_ID_LUT[_label.id] = _label.trainId if 0 <= _label.trainId < 255 else IGNORE_INDEX
        KNOWN_LABEL_IDS[_label.id] = True

#: label id (= instanceIds value // 1000) -> index into DET_CLASSES, -1 for every other class.
MAX_CLASS_ID = np.iinfo(np.uint16).max // formats.INSTANCE_OFFSET
DET_CLASS_LUT = np.full(MAX_CLASS_ID + 1, -1, dtype=np.int64)
for _index, _name in enumerate(DET_CLASSES):
    DET_CLASS_LUT[name2label[_name].id] = _index

#: Sample dict key of each official file kind's path, and the file kinds in reading order.
OFFICIAL_KINDS = {
    "img_path": formats.IMAGE_SUFFIX,
    "label_ids_path": formats.LABEL_IDS_SUFFIX,
    "instance_ids_path": formats.INSTANCE_IDS_SUFFIX,
    "disparity_path": formats.DISPARITY_SUFFIX,
    "camera_path": formats.CAMERA_SUFFIX,
    "normals_path": formats.NORMALS_SUFFIX,
}
OFFICIAL_TASK_OF_KIND = {
    "instance_ids_path": "det",
    "label_ids_path": "seg",
    "disparity_path": "depth",
    "normals_path": "normals",
}


def kinds() -> dict[str, str]:
    """Path key → suffix of every file kind: the official ones, then the registered tasks'
    (``Task.layout_files``)."""
    return {**OFFICIAL_KINDS, **{key: file.suffix for key, (_, file) in layout_files().items()}}


def task_of_kind() -> dict[str, str]:
    """Path key → the task its file labels."""
    extra = {key: task.name for key, (task, _) in layout_files().items()}
    return {**OFFICIAL_TASK_OF_KIND, **extra}


def folders() -> dict[str, str]:
    """Suffix → the folder under the dataset root of its files."""
    return {**formats.FOLDERS, **{file.suffix: file.folder for _, file in layout_files().values()}}


def sample_path(root: str, split: str, city: str, stem: str, suffix: str) -> str:
    """Where the layout keeps the ``suffix`` file of sample ``stem``."""
    return os.path.join(root, folders()[suffix], split, city, stem + suffix)


def scan_split(root: str, split: str) -> dict[tuple[str, str], dict[str, str]]:
    """Existing files of one split: ``(city, stem) -> {kind key: path}``, sorted by city, stem."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for key, suffix in kinds().items():
        pattern = os.path.join(root, folders()[suffix], split, "*", "*" + suffix)
        for path in glob.glob(pattern):
            city = os.path.basename(os.path.dirname(path))
            stem = os.path.basename(path)[: -len(suffix)]
            found.setdefault((city, stem), {})[key] = path
    return dict(sorted(found.items()))


def read_image(path: str) -> np.ndarray:
    """uint8 H×W×3 RGB."""
    return read_png(path, channels=3, dtype=np.uint8)


def read_label_ids(path: str, image_shape: tuple[int, int] | None) -> np.ndarray:
    """Raw 8-bit label ids, every one defined in cityscapesscripts' table."""
    label_ids = read_png(path, channels=1, dtype=np.uint8)
    check_size(path, label_ids, image_shape)
    unknown = np.unique(label_ids[~KNOWN_LABEL_IDS[label_ids]])
    if unknown.size:
        raise DataFileError(f"{path}: label ids {unknown.tolist()} are not in cityscapesscripts")
    return label_ids


def read_instance_ids(path: str, image_shape: tuple[int, int] | None) -> np.ndarray:
    """Raw 16-bit instanceIds."""
    instance_ids = read_png(path, channels=1, dtype=np.uint16)
    check_size(path, instance_ids, image_shape)
    return instance_ids


def instance_boxes(instance_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (float32 N×4 pixel-edge xyxy) and DET_CLASSES indices of the instances.

    A box bounds the instance's visible pixels: columns c0..c1 and rows r0..r1 give
    [c0, r0, c1 + 1, r1 + 1]. Values below 1000 (crowd and stuff regions) and classes outside
    DET_CLASSES give no box.
    """
    labels_of_pixel = DET_CLASS_LUT[instance_ids // formats.INSTANCE_OFFSET]
    rows, cols = np.nonzero((instance_ids >= formats.INSTANCE_OFFSET) & (labels_of_pixel >= 0))
    if rows.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    values = instance_ids[rows, cols]
    order = np.argsort(values, kind="stable")
    values, rows, cols = values[order], rows[order], cols[order]
    instances, starts = np.unique(values, return_index=True)
    boxes = np.stack(
        [
            np.minimum.reduceat(cols, starts),
            np.minimum.reduceat(rows, starts),
            np.maximum.reduceat(cols, starts) + 1,
            np.maximum.reduceat(rows, starts) + 1,
        ],
        axis=1,
    ).astype(np.float32)
    return boxes, DET_CLASS_LUT[instances // formats.INSTANCE_OFFSET]


def read_camera(path: str) -> tuple[float, float]:
    """``(baseline in m, fx in px)`` of an official camera json.

    Both must be JSON numbers (not booleans or strings), finite and positive, with
    baseline·fx such that every disparity code decodes to a finite, non-zero float32 depth.
    """
    try:
        with open(path, encoding="utf-8") as f:
            camera = json.load(f)
        values = {"baseline": camera["extrinsic"]["baseline"], "fx": camera["intrinsic"]["fx"]}
    except FileNotFoundError:
        raise DataFileError(f"{path}: file is missing") from None
    except json.JSONDecodeError as err:
        raise DataFileError(f"{path}: not valid JSON ({err})") from None
    except (KeyError, TypeError) as err:
        raise DataFileError(f"{path}: lacks extrinsic.baseline or intrinsic.fx ({err!r})") from None
    numbers = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataFileError(f"{path}: {name} must be a number, found {json.dumps(value)}")
        try:
            numbers[name] = float(value)
        except OverflowError:  # an integer beyond float's range
            numbers[name] = math.inf
        if not (math.isfinite(numbers[name]) and numbers[name] > 0):
            raise DataFileError(
                f"{path}: {name} must be finite and positive, found {numbers[name]}"
            )
    baseline, fx = numbers["baseline"], numbers["fx"]
    # Disparities run from 1 / 256 to 65534 / 256 px, so depths from 256·b·fx down to b·fx / 256.
    if not (baseline * fx * 256.0 <= FLOAT32_MAX and baseline * fx / 256.0 >= FLOAT32_TINY):
        raise DataFileError(
            f"{path}: baseline ({baseline}) × fx ({fx}) gives depths outside float32's range"
        )
    return baseline, fx


def read_disparity(path: str, image_shape: tuple[int, int] | None) -> np.ndarray:
    """Raw 16-bit disparity codes."""
    disparity = read_png(path, channels=1, dtype=np.uint16)
    check_size(path, disparity, image_shape)
    return disparity


def read_normals(path: str, image_shape: tuple[int, int] | None) -> np.ndarray:
    """float32 H×W×3 unit normals, all-zero where invalid.

    Raises ``DataFileError`` when a valid pixel's code is not a unit normal within the
    encoding's quantisation (``formats.NORMALS_NORM_TOLERANCE``), rather than renormalise it.
    """
    code = read_png(path, channels=3, dtype=np.uint16)
    check_size(path, code, image_shape)
    error = formats.normals_norm_error(code)
    bad = error > formats.NORMALS_NORM_TOLERANCE
    if bad.any():
        row, col = np.unravel_index(np.argmax(error), error.shape)
        raise DataFileError(
            f"{path}: {int(bad.sum())} valid pixel(s) do not encode unit normals (|norm - 1| up "
            f"to {error.max():.3g} at row {row}, column {col}; quantisation allows "
            f"{formats.NORMALS_NORM_TOLERANCE:.2g})"
        )
    return formats.decode_normals_png(code)


@DATASETS.register_module()
class CityscapesMTL(MTLDataset):
    """Cityscapes (official layout) for detection, segmentation, depth and, where the
    ``normals/`` folder exists, normals.

    A task is provided when any image of the split has its file; then every image must have
    it, else construction fails listing the missing files. Depth needs each sample's camera json.
    """

    METAINFO = dict(classes=SEG_CLASSES, det_classes=DET_CLASSES, palette=SEG_PALETTE)
    #: Tasks that must be present; construction fails otherwise.
    REQUIRED_TASKS: tuple[str, ...] = ()

    def __init__(self, *, data_root: str = "data/cityscapes", split: str = "train", **kwargs):
        self.split = split
        super().__init__(data_root=data_root, **kwargs)

    def load_data_list(self) -> list[dict]:
        image_dir = os.path.join(self.data_root, formats.FOLDERS[formats.IMAGE_SUFFIX], self.split)
        require_dir(image_dir, f"the split '{self.split}' image")
        found = scan_split(self.data_root, self.split)
        samples = [(key, files) for key, files in found.items() if "img_path" in files]
        if not samples:
            raise DataFileError(f"{image_dir}: no {{city}}/*{formats.IMAGE_SUFFIX} files")
        present = [
            key
            for key in kinds()
            if key != "camera_path" and any(key in files for _, files in samples)
        ]
        for key in present:
            suffix = kinds()[key]
            missing = [self._path(k, suffix) for k, files in samples if key not in files]
            if missing:
                raise missing_files_error(suffix, missing, len(samples))
        if "disparity_path" in present:
            no_camera = [
                (files["disparity_path"], self._path(key, formats.CAMERA_SUFFIX))
                for key, files in samples
                if "camera_path" not in files
            ]
            if no_camera:
                disparity, camera = no_camera[0]
                raise DataFileError(
                    f"{disparity}: disparity needs its camera json, {camera} is missing "
                    f"({len(no_camera)} of {len(samples)} samples lack one)"
                )
            present.append("camera_path")
        self._tasks = tuple(task for key, task in task_of_kind().items() if key in present)
        for task in self.REQUIRED_TASKS:
            if task not in self._tasks:
                kind = next(key for key, t in task_of_kind().items() if t == task)
                folder = os.path.join(self.data_root, folders()[kinds()[kind]], self.split)
                raise DataFileError(f"{folder}: {type(self).__name__} needs {task}, none found")
        return [{key: files[key] for key in present} for _, files in samples]

    def _path(self, key: tuple[str, str], suffix: str) -> str:
        return sample_path(self.data_root, self.split, *key, suffix)

    def get_raw_sample(self, idx: int) -> dict:
        info, sample = self.image_sample(idx, read_image)
        shape = sample["img_shape"]
        if "label_ids_path" in info:
            sample["gt_seg_map"] = TRAIN_ID_LUT[read_label_ids(info["label_ids_path"], shape)]
        if "instance_ids_path" in info:
            instance_ids = read_instance_ids(info["instance_ids_path"], shape)
            sample["gt_bboxes"], sample["gt_bboxes_labels"] = instance_boxes(instance_ids)
        if "disparity_path" in info:
            baseline, fx = read_camera(info["camera_path"])
            code = read_disparity(info["disparity_path"], shape)
            sample["gt_depth_map"] = formats.disparity_png_to_depth(code, baseline, fx)
        if "normals_path" in info:
            sample["gt_normals_map"] = read_normals(info["normals_path"], shape)
        for key, (task, file) in layout_files().items():
            if key in info:
                sample[task.raw_keys[0]] = file.read(info[key], shape)
        return sample
