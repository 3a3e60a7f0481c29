"""Around the network, shared by the PyTorch and the onnxruntime paths: image → normalised padded
batch (``prepare``), raw outputs → results at the original image size (``postprocess``).

The forward rules mirror the test pipeline and the data preprocessor: the test pipeline's own
``Resize`` (s = min(w / W, h / H) for scale (w, h)), normalisation, zero padding bottom/right to
a multiple of 32. The inverse rules mirror ``MultiTaskModel.predict`` and then undo the zoom:
maps are upsampled to the padded size, cropped to the resized image and resized bilinearly to
the original size; boxes are divided by the zoom and metric depth multiplied by it (training
divides depth by the zoom, so a prediction at zoom s is the true depth / s).
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
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from torch import Tensor

from adperception.models.heads.dense import upsample
from adperception.registry import TRANSFORMS

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


def detections(
    logits: Tensor,
    boxes: Tensor,
    *,
    img_shape: tuple[int, int],
    use_sigmoid: bool,
    num_classes: int,
    max_per_img: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """mmdet's ``DETRHead._predict_by_feat_single`` (rescale=False) for one image's Q×K logits
    and Q×4 normalised cxcywh boxes: (xyxy boxes in ``img_shape`` pixels, scores, labels).

    Sigmoid heads (DAB-DETR, Conditional DETR, Deformable DETR, DINO): top-k of the flattened
    Q×K scores; softmax DETR: softmax over K + 1, background dropped, best class per query.
    """
    if use_sigmoid:
        scores, indexes = logits.sigmoid().view(-1).topk(max_per_img)
        labels = indexes % num_classes
        boxes = boxes[indexes // num_classes]
    else:
        scores, labels = F.softmax(logits, dim=-1)[..., :-1].max(-1)
        scores, index = scores.topk(max_per_img)
        boxes, labels = boxes[index], labels[index]
    xyxy = bbox_cxcywh_to_xyxy(boxes)
    height, width = img_shape
    xyxy[:, 0::2] = (xyxy[:, 0::2] * width).clamp(min=0, max=width)
    xyxy[:, 1::2] = (xyxy[:, 1::2] * height).clamp(min=0, max=height)
    return xyxy, scores, labels


def _restore(output: Tensor, prepared: Prepared) -> Tensor:
    """C×h4×w4 map → C×H×W at the original size: upsample to the padded input, crop the
    resized image, resize bilinearly to the original."""
    padded = upsample(output[None].float(), prepared.batch.shape[-2:])
    height, width = prepared.resized_shape
    crop = padded[..., :height, :width]
    shape = prepared.image.shape[:2]
    return (crop if crop.shape[-2:] == shape else upsample(crop, shape))[0]


def postprocess(
    outputs: Mapping[str, Tensor | np.ndarray], index: int, prepared: Prepared, meta: Mapping
) -> dict[str, np.ndarray]:
    """Results of image ``index`` of a batch's raw ``outputs`` (torch or onnxruntime arrays):
    ``boxes`` N×4 xyxy px, ``scores``, ``labels``, ``seg`` H×W train ids, ``depth`` H×W m,
    ``normals`` H×W×3 unit vectors, for the tasks the model has, at the original size."""
    raw = {name: torch.as_tensor(value[index]) for name, value in outputs.items()}
    w_scale, h_scale = prepared.scale_factor
    results: dict[str, np.ndarray] = {}
    if "det_logits" in raw:
        det = meta["detection"]
        boxes, scores, labels = detections(
            raw["det_logits"].float(),
            raw["det_boxes"].float(),
            img_shape=prepared.resized_shape,
            use_sigmoid=det["use_sigmoid"],
            num_classes=det["num_classes"],
            max_per_img=det["max_per_img"],
        )
        boxes = boxes / boxes.new_tensor([w_scale, h_scale, w_scale, h_scale])
        results.update(boxes=boxes.numpy(), scores=scores.numpy(), labels=labels.numpy())
    if "seg_logits" in raw:
        results["seg"] = _restore(raw["seg_logits"], prepared).argmax(dim=0).numpy()
    if "depth" in raw:
        # The axes' zooms differ by rounding; depth follows their geometric mean, as in training.
        zoom = math.sqrt(w_scale * h_scale)
        depth = _restore(raw["depth"], prepared)[0] * zoom
        caps = meta.get("depth")  # the head's [min_depth, max_depth]; older exports have none
        if caps is not None:
            depth = depth.clamp(caps["min_depth"], caps["max_depth"])
        results["depth"] = depth.numpy()
    if "normals" in raw:
        normals = F.normalize(_restore(raw["normals"], prepared), dim=0)
        results["normals"] = normals.permute(1, 2, 0).contiguous().numpy()
    return results
