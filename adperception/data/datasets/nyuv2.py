"""NYUv2 as the MTL literature preprocessed it (mtan, LibMTL, nash-mtl, CAGrad):
``{root}/{split}/{image,label,depth,normal}/{i}.npy`` at 288×384, 13 classes, no boxes.

image H×W×3 float in [0, 1]; label H×W with -1 = ignore; depth H×W×1 (or H×W) metres with
0 = invalid; normal H×W×3 in [-1, 1], all-zero = invalid.
"""

from __future__ import annotations

import glob
import os
import zipfile

import numpy as np

from adperception.data.datasets.base import (
    MTLDataset,
    check_size,
    missing_files_error,
    require_dir,
)
from adperception.data.formats import DataFileError
from adperception.registry import DATASETS

SEG_CLASSES = (
    "bed",
    "books",
    "ceiling",
    "chair",
    "floor",
    "furniture",
    "objects",
    "painting",
    "sofa",
    "table",
    "tv",
    "wall",
    "window",
)
#: matplotlib's tab20 colours 0, 2, ..., 18 then 1, 3, 5: distinct at a glance.
SEG_PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
)
IGNORE_INDEX = 255
#: Sample dict key of each file kind's path -> its folder under ``{root}/{split}``.
KINDS = {
    "img_path": "image",
    "label_path": "label",
    "depth_path": "depth",
    "normal_path": "normal",
}
TASK_OF_KIND = {"label_path": "seg", "depth_path": "depth", "normal_path": "normals"}


def load_npy(path: str) -> np.ndarray:
    """``np.load`` without pickles; a missing, truncated or non-npy file is a DataFileError."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFileError(f"{path}: file is missing") from None
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise DataFileError(f"{path}: not a readable .npy (truncated or corrupt: {err})") from None


def _require_float(path: str, array: np.ndarray, what: str, layout: str) -> None:
    """``layout`` is "HxW" or "HxWx3"."""
    ndim = layout.count("x") + 1
    if array.ndim != ndim or (ndim == 3 and array.shape[2] != 3):
        raise DataFileError(f"{path}: {what} must be {layout}, found shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise DataFileError(f"{path}: {what} must be floating point, found {array.dtype}")
    if not np.isfinite(array).all():
        raise DataFileError(f"{path}: {what} has non-finite values")


def read_image(path: str) -> np.ndarray:
    """uint8 H×W×3 RGB from floats in [0, 1]: round(x * 255)."""
    image = load_npy(path)
    _require_float(path, image, "image", "HxWx3")
    if image.size == 0:
        raise DataFileError(f"{path}: image is empty, shape {image.shape}")
    if image.min() < -1e-3 or image.max() > 1 + 1e-3:
        raise DataFileError(
            f"{path}: image values must lie in [0, 1], found [{image.min()}, {image.max()}]"
        )
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def read_label(path: str, image_shape: tuple[int, int] | None) -> np.ndarray:
    """int64 H×W class indices 0..12, 255 where the file has -1."""
    label = load_npy(path)
    if label.ndim == 3 and label.shape[2] == 1:
        label = label[..., 0]
    if label.ndim != 2:
        raise DataFileError(f"{path}: label must be HxW, found shape {label.shape}")
    check_size(path, label, image_shape)
    valid = (label == -1) | ((label >= 0) & (label < len(SEG_CLASSES)) & (label == np.round(label)))
    if not valid.all():
        bad = np.unique(label[~valid])[:10].tolist()
        raise DataFileError(f"{path}: label values must be 0..12 or -1, found {bad}")
    label = label.astype(np.int64)
    label[label == -1] = IGNORE_INDEX
    return label


def read_depth(path: str, image_shape: tuple[int, int] | None) -> np.ndarray:
    """float32 H×W metres, 0 = invalid."""
    depth = load_npy(path)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    _require_float(path, depth, "depth", "HxW")
    check_size(path, depth, image_shape)
    if (depth < 0).any():
        raise DataFileError(f"{path}: depth has negative values (min {depth.min()})")
    return depth.astype(np.float32)


def read_normals(path: str, image_shape: tuple[int, int] | None) -> np.ndarray:
    """float32 H×W×3 unit normals; all-zero pixels stay all-zero (invalid)."""
    normals = load_npy(path)
    _require_float(path, normals, "normal", "HxWx3")
    check_size(path, normals, image_shape)
    normals = normals.astype(np.float64)
    norm = np.linalg.norm(normals, axis=-1, keepdims=True)
    return np.where(norm > 0, normals / np.where(norm > 0, norm, 1.0), 0.0).astype(np.float32)


def scan_split(root: str, split: str) -> dict[int, dict[str, str]]:
    """Existing files of one split: ``i -> {kind key: path}``, sorted by i."""
    found: dict[int, dict[str, str]] = {}
    for key, folder in KINDS.items():
        for path in glob.glob(os.path.join(root, split, folder, "*.npy")):
            stem = os.path.basename(path)[: -len(".npy")]
            if not stem.isdigit():
                raise DataFileError(f"{path}: expected a file named {{i}}.npy with integer i")
            found.setdefault(int(stem), {})[key] = path
    return dict(sorted(found.items()))


@DATASETS.register_module()
class NYUv2MTL(MTLDataset):
    """NYUv2 for segmentation (13 classes), depth and normals, in the literature's layout.

    A task is provided when any sample of the split has its file; then every sample must have it.
    """

    METAINFO = dict(classes=SEG_CLASSES, det_classes=(), palette=SEG_PALETTE)

    def __init__(self, *, data_root: str = "data/nyuv2", split: str = "train", **kwargs):
        self.split = split
        super().__init__(data_root=data_root, **kwargs)

    def load_data_list(self) -> list[dict]:
        image_dir = os.path.join(self.data_root, self.split, KINDS["img_path"])
        require_dir(image_dir, f"the split '{self.split}' image")
        samples = [
            (i, files)
            for i, files in scan_split(self.data_root, self.split).items()
            if "img_path" in files
        ]
        if not samples:
            raise DataFileError(f"{image_dir}: no {{i}}.npy files")
        present = [key for key in KINDS if any(key in files for _, files in samples)]
        for key in present:
            missing = [
                os.path.join(self.data_root, self.split, KINDS[key], f"{i}.npy")
                for i, files in samples
                if key not in files
            ]
            if missing:
                raise missing_files_error(KINDS[key], missing, len(samples))
        self._tasks = tuple(task for key, task in TASK_OF_KIND.items() if key in present)
        return [files for _, files in samples]

    def get_raw_sample(self, idx: int) -> dict:
        info, sample = self.image_sample(idx, read_image)
        shape = sample["img_shape"]
        if "label_path" in info:
            sample["gt_seg_map"] = read_label(info["label_path"], shape)
        if "depth_path" in info:
            sample["gt_depth_map"] = read_depth(info["depth_path"], shape)
        if "normal_path" in info:
            sample["gt_normals_map"] = read_normals(info["normal_path"], shape)
        return sample
