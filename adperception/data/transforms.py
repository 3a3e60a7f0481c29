"""Target-consistent augmentation of the raw multi-task sample (docs/design.md §3).

Random parameters come from numpy's global RNG, so mmengine's seeding makes a pipeline
reproducible; albumentations then applies them as deterministic ops in one ``Compose`` call,
so the image, every map and the boxes undergo exactly the same geometry. Maps use nearest
interpolation (no blended labels or depths). The physics that albumentations does not know
about is each task's own (``adperception.tasks``): a uniform zoom by s divides metric depth by
s, a horizontal flip negates the normals' x component.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
from mmcv.transforms import BaseTransform

from adperception.data.structures import MTLDataSample
from adperception.registry import TRANSFORMS
from adperception.tasks.base import MapTask, Task, chw, get_task, task_names


def _map_tasks(results: dict) -> list[MapTask]:
    """The dense-map tasks whose target the sample carries."""
    return [task for task in map(get_task, task_names()) if isinstance(task, MapTask)
            and task.in_sample(results)]  # fmt: skip


def _box_tasks(results: dict) -> list[Task]:
    """The box tasks whose target the sample carries (boxes move through albumentations'
    bbox pipeline, clipped and dropped with their labels)."""
    return [
        task
        for task in map(get_task, task_names())
        if not isinstance(task, MapTask) and task.in_sample(results)
    ]


def _where(results: dict) -> str:
    return str(results.get("img_path", "<sample without img_path>"))


def _check_sample(results: dict) -> None:
    """Reject a sample whose parts disagree, naming its file, before any op runs on it."""
    img = results.get("img")
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", None)
        raise ValueError(f"{_where(results)}: 'img' must be an H×W×3 array, got shape {shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"{_where(results)}: 'img' must be uint8, got {img.dtype}")
    for task in map(get_task, task_names()):
        if task.in_sample(results):
            task.check(results, img.shape[:2], _where(results))


def _apply_geometric(
    results: dict, ops: Sequence[A.BasicTransform], *, min_visibility: float = 0.0
) -> dict:
    """Run deterministic albumentations ``ops`` over the image, maps and boxes of ``results``.

    Maps use nearest interpolation; boxes are clipped to the output image and dropped, with
    their labels, when the visible fraction of their area falls below ``min_visibility`` or
    their area is zero.
    """
    _check_sample(results)
    maps = [task.map_key for task in _map_tasks(results)]
    box_tasks = _box_tasks(results)
    if len(box_tasks) > 1:
        raise ValueError(f"one box task per sample, found {[t.name for t in box_tasks]}")
    data = {"image": results["img"], **{key: results[key] for key in maps}}
    bbox_params = None
    if box_tasks:
        boxes_key, labels_key = box_tasks[0].raw_keys
        data["bboxes"] = results[boxes_key]
        data["bbox_labels"] = results[labels_key]
        bbox_params = A.BboxParams(
            format="pascal_voc", label_fields=["bbox_labels"], min_visibility=min_visibility
        )
    out = A.Compose(
        list(ops), bbox_params=bbox_params, additional_targets=dict.fromkeys(maps, "mask")
    )(**data)
    results["img"] = out["image"]
    for key in maps:
        results[key] = out[key].astype(results[key].dtype, copy=False)
    if box_tasks:
        results[boxes_key] = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        results[labels_key] = np.asarray(out["bbox_labels"], dtype=np.int64)
    results["img_shape"] = results["pad_shape"] = results["img"].shape[:2]
    return results


def _rescale(results: dict, scale: float) -> dict:
    """Zoom the sample uniformly by ``scale``; metric depth is divided by the realised zoom."""
    height, width = results["img"].shape[:2]
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    op = A.Resize(new_h, new_w, interpolation=interpolation, mask_interpolation=cv2.INTER_NEAREST)
    results = _apply_geometric(results, [op])
    w_scale, h_scale = new_w / width, new_h / height
    # Rounding makes the two axes' zooms differ by < 1 px; the physics follows their geometric mean.
    for task in map(get_task, task_names()):
        if task.in_sample(results):
            task.after_zoom(results, math.sqrt(w_scale * h_scale))
    prev_w, prev_h = results.get("scale_factor", (1.0, 1.0))
    results["scale_factor"] = (prev_w * w_scale, prev_h * h_scale)
    return results


def _global_rng() -> np.random.Generator:
    """A Generator over numpy's global bit generator, so ``np.random.seed`` (which mmengine's
    seeding and its dataloader workers call) fixes every draw."""
    return np.random.Generator(np.random.get_bit_generator())


def _fit_scale(results: dict, scale: tuple[int, int]) -> float:
    """Largest uniform scale that fits the image into ``scale`` = (w, h)."""
    height, width = results["img"].shape[:2]
    return min(scale[0] / width, scale[1] / height)


@TRANSFORMS.register_module()
class Resize(BaseTransform):
    """Aspect-preserving resize by s = min(w / W, h / H) for ``scale`` = (w, h): the test-time
    resize.

    Before the first ``Resize``, each task keeps what it evaluates at the original size
    (``Task.keep_original``: depth keeps ``ori_gt_depth_map``, in the original image's metres).
    """

    def __init__(self, scale: tuple[int, int]) -> None:
        self.scale = tuple(scale)

    def transform(self, results: dict) -> dict:
        results.setdefault("ori_shape", results["img"].shape[:2])
        for task in map(get_task, task_names()):
            if task.in_sample(results):
                task.keep_original(results)
        return _rescale(results, _fit_scale(results, self.scale))


@TRANSFORMS.register_module()
class RandomResize(BaseTransform):
    """Aspect-preserving resize by min(w / W, h / H) · r, r uniform in ``ratio_range``."""

    def __init__(
        self, scale: tuple[int, int], ratio_range: tuple[float, float] = (0.5, 2.0)
    ) -> None:
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    def transform(self, results: dict) -> dict:
        ratio = _global_rng().uniform(*self.ratio_range)
        return _rescale(results, _fit_scale(results, self.scale) * ratio)


@TRANSFORMS.register_module()
class RandomCrop(BaseTransform):
    """Random ``crop_size`` = (h, w) window, after padding the bottom/right up to that size.

    Padding writes black image and each task's ``pad_value`` (ignored labels, invalid depth and
    normals), and counts as image in ``img_shape``/``pad_shape`` (the crop
    size). Boxes are clipped to the window and dropped with their labels when less than
    ``min_visibility`` of their area stays visible; ``min_visibility`` must be positive so that
    zero-area remnants are always dropped.
    """

    def __init__(self, crop_size: tuple[int, int], min_visibility: float = 0.25) -> None:
        if not 0 < min_visibility <= 1:
            raise ValueError(f"min_visibility must be in (0, 1], got {min_visibility}")
        self.crop_size = tuple(crop_size)
        self.min_visibility = min_visibility

    def transform(self, results: dict) -> dict:
        _check_sample(results)
        crop_h, crop_w = self.crop_size
        height, width = results["img"].shape[:2]
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        if pad_h or pad_w:
            pads = {"img": 0, **{task.map_key: task.pad_value for task in _map_tasks(results)}}
            for key, value in pads.items():
                array = results[key]
                widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
                results[key] = np.pad(array, widths, constant_values=value)
        rng = _global_rng()
        y0 = int(rng.integers(height + pad_h - crop_h + 1))
        x0 = int(rng.integers(width + pad_w - crop_w + 1))
        op = A.Crop(x_min=x0, y_min=y0, x_max=x0 + crop_w, y_max=y0 + crop_h)
        return _apply_geometric(results, [op], min_visibility=self.min_visibility)


@TRANSFORMS.register_module()
class RandomFlip(BaseTransform):
    """Horizontal flip with probability ``prob``; each task adds its physics
    (``Task.after_flip``: normals' x is negated), ``flip`` toggles."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def transform(self, results: dict) -> dict:
        results.setdefault("flip", False)
        results.setdefault("flip_direction", None)
        if _global_rng().random() >= self.prob:
            return results
        results = _apply_geometric(results, [A.HorizontalFlip(p=1.0)])
        for task in map(get_task, task_names()):
            if task.in_sample(results):
                task.after_flip(results)
        results["flip"] = not results["flip"]
        results["flip_direction"] = "horizontal" if results["flip"] else None
        return results


@TRANSFORMS.register_module()
class PhotoMetricDistortion(BaseTransform):
    """Brightness, contrast, saturation and hue jitter of the image only, each with ``prob``.

    ``brightness_delta`` is additive on the 0-255 scale, the ranges are multiplicative factors,
    and ``hue_delta`` is in OpenCV's uint8 hue units (180 per turn), as in mmcv/mmseg.
    """

    def __init__(
        self,
        *,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        prob: float = 0.5,
    ) -> None:
        low, high = contrast_range
        self.pipeline = A.Compose(
            [
                A.RandomBrightnessContrast(
                    brightness_limit=brightness_delta / 255.0, contrast_limit=0.0, p=prob
                ),
                A.RandomBrightnessContrast(
                    brightness_limit=0.0, contrast_limit=(low - 1.0, high - 1.0), p=prob
                ),
                A.ColorJitter(
                    brightness=0.0,
                    contrast=0.0,
                    saturation=tuple(saturation_range),
                    hue=0.0,
                    p=prob,
                ),
                A.HueSaturationValue(
                    hue_shift_limit=hue_delta, sat_shift_limit=0, val_shift_limit=0, p=prob
                ),
            ]
        )

    def transform(self, results: dict) -> dict:
        _check_sample(results)
        # albumentations keeps its own RNG: reseed it from numpy's so mmengine's seed governs it.
        self.pipeline.set_random_seed(int(_global_rng().integers(2**31)))
        results["img"] = self.pipeline(image=results["img"])["image"]
        return results


@TRANSFORMS.register_module()
class PackMTLInputs(BaseTransform):
    """Pack a sample into {'inputs': uint8 3×H×W tensor, 'data_samples': MTLDataSample}.

    Each task the sample provides becomes its field (``Task.pack``); a sample of a dataset
    with boxes keeps ``gt_instances`` even when no box survived augmentation (0×4).
    """

    def __init__(
        self,
        meta_keys: Sequence[str] = (
            "img_path",
            "sample_idx",
            "ori_shape",
            "img_shape",
            "pad_shape",
            "scale_factor",
            "flip",
            "flip_direction",
        ),
    ) -> None:
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        _check_sample(results)
        img = results["img"]
        shape = img.shape[:2]
        defaults = {
            "img_shape": shape,
            "pad_shape": shape,
            "scale_factor": (1.0, 1.0),
            "flip": False,
            "flip_direction": None,
        }
        metainfo = {
            key: results[key] if key in results else defaults[key]
            for key in self.meta_keys
            if key in results or key in defaults
        }
        sample = MTLDataSample(metainfo=metainfo)
        for task in map(get_task, task_names()):
            if task.in_sample(results):
                setattr(sample, task.gt_field, task.pack(results))
        return {"inputs": chw(img, np.uint8), "data_samples": sample}
