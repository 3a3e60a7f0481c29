"""Around the network, shared by the PyTorch and the onnxruntime paths: image → normalised padded
batch (``prepare``), raw outputs → results at the original image size (``postprocess``).

The forward rules mirror the test pipeline and the data preprocessor: the test pipeline's own
``Resize`` (s = min(w / W, h / H) for scale (w, h)), normalisation, zero padding bottom/right to
a multiple of 32. The inverse rules are each task's (``Task.postprocess``): they mirror
``MultiTaskModel.predict`` and then undo the zoom: maps are upsampled to the padded size,
cropped to the resized image and resized bilinearly to the original size; boxes are divided by
the zoom and metric depth multiplied by it (training divides depth by the zoom, so a prediction
at zoom s is the true depth / s).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from adperception.registry import TRANSFORMS
from adperception.tasks.base import get_task

Image = str | os.PathLike | np.ndarray


@dataclass(frozen=True)
class Prepared:
    """One image ready for the network, and what is needed to map results back to it."""

    batch: Tensor  # 1×3×Hp×Wp float32, normalised and padded
    image: np.ndarray  # the original uint8 H×W×3 RGB image
    resized_shape: tuple[int, int]  # (h, w) after the test pipeline's Resize
    scale_factor: tuple[float, float]  # realised (w / W, h / H) zoom


def read_image(image: Image) -> np.ndarray:
    """uint8 H×W×3 RGB array of a file path or an array (checked, not converted)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image must be a uint8 H×W×3 RGB array, got {image.dtype} {image.shape}"
            )
        return image
    bgr = cv2.imread(os.fspath(image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{image}: not a readable image file")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def prepare(image: Image, meta: Mapping, *, pad_to: tuple[int, int] | None = None) -> Prepared:
    """Resize as the test pipeline, normalise, pad to a multiple of the divisor (or to
    ``pad_to`` = (Hp, Wp), the fixed input size of an ONNX graph)."""
    original = read_image(image)
    size = meta["size"]
    results = {"img": original}
    if size["resize"] is not None:
        results = TRANSFORMS.build(dict(type="Resize", scale=tuple(size["resize"])))(results)
    resized = results["img"]
    height, width = resized.shape[:2]
    norm = meta["normalisation"]
    img = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()
    if not norm["rgb"]:
        img = img.flip(0)
    mean = torch.tensor(norm["mean"]).view(3, 1, 1)
    std = torch.tensor(norm["std"]).view(3, 1, 1)
    img = (img - mean) / std
    if pad_to is None:
        divisor = size["pad_size_divisor"]
        pad_to = (math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor)
    if height > pad_to[0] or width > pad_to[1]:
        raise ValueError(f"resized image {height}×{width} exceeds the model input {pad_to}")
    img = F.pad(img, (0, pad_to[1] - width, 0, pad_to[0] - height), value=size["pad_value"])
    return Prepared(
        batch=img[None],
        image=original,
        resized_shape=(height, width),
        scale_factor=tuple(results.get("scale_factor", (1.0, 1.0))),
    )


def postprocess(
    outputs: Mapping[str, Tensor | np.ndarray], index: int, prepared: Prepared, meta: Mapping
) -> dict[str, np.ndarray]:
    """Results of image ``index`` of a batch's raw ``outputs`` (torch or onnxruntime arrays), at
    the original size, for the tasks the model has (``Task.postprocess``): ``boxes`` N×4 xyxy
    px, ``scores``, ``labels``; ``seg`` H×W train ids; ``depth`` H×W m; ``normals`` H×W×3 unit
    vectors; and the keys of any other task."""
    raw = {name: torch.as_tensor(value[index]) for name, value in outputs.items()}
    results: dict[str, np.ndarray] = {}
    for task in map(get_task, meta["tasks"]):
        results.update(task.postprocess(raw, prepared, meta))
    return results
