"""One metric for every task the samples carry: detection, segmentation, depth and normals.

Detection goes through mmdet's ``CocoMetric`` (COCO ground truth built from the fed boxes),
segmentation through mmseg's ``IoUMetric`` area functions; depth and normals are ours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from mmdet.evaluation import CocoMetric
from mmengine.evaluator import BaseMetric
from mmengine.structures import BaseDataElement
from mmseg.evaluation import IoUMetric

from adperception.data.datasets.base import TASKS
from adperception.evaluation.depth import depth_sums, summarize_depth
from adperception.evaluation.normals import normals_stats, summarize_normals
from adperception.registry import METRICS

#: (prediction field, ground-truth field) of each task in a packed sample.
FIELDS = {
    "det": ("pred_instances", "gt_instances"),
    "seg": ("pred_sem_seg", "gt_sem_seg"),
    "depth": ("pred_depth", "gt_depth"),
    "normals": ("pred_normals", "gt_normals"),
}


@METRICS.register_module()
class MultiTaskMetric(BaseMetric):
    """Evaluates each of ``tasks`` on the samples whose ground truth has it.

    Keys (a task whose ground truth no sample carries is left out): ``det/mAP``, ``det/mAP_50``
    (COCO box AP over IoU 0.50:0.95 and at 0.50), ``seg/mIoU``, ``seg/aAcc``, ``depth/abs_err``,
    ``depth/rmse`` (metres), ``depth/abs_rel`` (fraction), ``depth/delta1``, ``normals/mean``,
    ``normals/median`` (degrees), ``normals/within_11.25``, ``normals/within_22.5``,
    ``normals/within_30``. Every share is in percent (0-100): mAP, mAP_50, mIoU, aAcc, delta1,
    within_*; mAP has mmdet's resolution of 0.1 points. Segmentation, depth and normals count
    every valid pixel of the dataset once (pixel-weighted, as the MTL literature's NYUv2
    evaluations do); mIoU averages the classes present in targets or predictions. A metric
    without any valid pixel or box is NaN. Depth compares ``pred_depth`` and ``gt_depth`` as
    they come, which the test pipeline and ``DepthHead.predict`` put at ``ori_shape`` in the
    original image's metres.

    Args:
        tasks: the tasks to evaluate; a sample with a task's ground truth must also carry its
            prediction.
        det_classes: detection class names, indexed by label; default ``dataset_meta``'s
            ``det_classes``.
        seg_classes: segmentation class names, indexed by train id; default ``dataset_meta``'s
            ``classes``.
        ignore_index: the segmentation target's ignore id.
        min_depth, max_depth: depth targets outside (min_depth, max_depth) metres are ignored,
            as the depth literature caps its evaluations (80 m driving, 10 m NYUv2).
    """

    default_prefix: str | None = None

    def __init__(
        self,
        *,
        tasks: Sequence[str] = TASKS,
        det_classes: Sequence[str] | None = None,
        seg_classes: Sequence[str] | None = None,
        ignore_index: int = 255,
        min_depth: float = 0.0,
        max_depth: float = math.inf,
        collect_device: str = "cpu",
        prefix: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        unknown = set(tasks) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; known: {list(FIELDS)}")
        self.tasks = tuple(tasks)
        self._det_classes = None if det_classes is None else tuple(det_classes)
        self._seg_classes = None if seg_classes is None else tuple(seg_classes)
        self.ignore_index = ignore_index
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        self.min_depth = min_depth
        self.max_depth = max_depth

    @property
    def det_classes(self) -> tuple[str, ...]:
        if self._det_classes is not None:
            return self._det_classes
        return self._from_dataset_meta("det_classes")

    @property
    def seg_classes(self) -> tuple[str, ...]:
        if self._seg_classes is not None:
            return self._seg_classes
        return self._from_dataset_meta("classes")

    def process(self, data_batch: Any, data_samples: Sequence[Mapping | BaseDataElement]) -> None:
        """Keep one small record per sample: ``{task: per-image sums}`` for its tasks."""
        for sample in data_samples:
            if isinstance(sample, BaseDataElement):
                sample = sample.to_dict()
            record = {}
            for task in self.tasks:
                pred_field, gt_field = FIELDS[task]
                if gt_field not in sample:
                    continue
                if pred_field not in sample:
                    raise KeyError(f"sample has {gt_field} but no {pred_field} to evaluate")
                record[task] = self._measure(task, sample[pred_field], sample[gt_field], sample)
            self.results.append(record)

    def compute_metrics(self, results: list[dict[str, Any]]) -> dict[str, float]:
        metrics = {}
        for task in self.tasks:
            per_image = [record[task] for record in results if task in record]
            if per_image:
                summary = (
                    _summarize_det(per_image, self.det_classes)
                    if task == "det"
                    else SUMMARIZE[task](per_image)
                )
                metrics.update({f"{task}/{key}": value for key, value in summary.items()})
        return metrics

    def _measure(self, task: str, pred: Mapping, gt: Mapping, sample: Mapping) -> Any:
        """The small per-image record of ``task`` that ``compute_metrics`` sums up."""
        if task == "det":
            return _det_record(pred, gt, sample["img_shape"])
        gt_map = gt["data"]
        pred_map = pred["data"].to(gt_map.device)
        if task == "depth":
            return depth_sums(pred_map, gt_map, min_depth=self.min_depth, max_depth=self.max_depth)
        if task == "normals":
            return normals_stats(pred_map, gt_map)
        if pred_map.shape != gt_map.shape:
            raise ValueError(
                f"seg prediction {tuple(pred_map.shape)} != target {tuple(gt_map.shape)}"
            )
        areas = IoUMetric.intersect_and_union(
            pred_map, gt_map, len(self.seg_classes), self.ignore_index
        )
        return torch.stack(areas).to(torch.int64).numpy()

    def _from_dataset_meta(self, key: str) -> tuple[str, ...]:
        if self.dataset_meta is None or key not in self.dataset_meta:
            raise ValueError(f"class names: pass them or set dataset_meta['{key}']")
        return tuple(self.dataset_meta[key])


def _det_record(pred: Mapping, gt: Mapping, img_shape: Sequence[int]) -> dict[str, dict]:
    """One image in ``CocoMetric``'s (gt, prediction) form, numpy and plain Python only."""
    height, width = img_shape[:2]
    anns = [
        {"bbox": box, "bbox_label": label}
        for box, label in zip(gt["bboxes"].tolist(), gt["labels"].tolist(), strict=True)
    ]
    return {
        "gt": {"width": int(width), "height": int(height), "anns": anns},
        "pred": {key: pred[key].detach().cpu().numpy() for key in ("bboxes", "scores", "labels")},
    }


def _summarize_det(records: list[dict[str, dict]], classes: Sequence[str]) -> dict[str, float]:
    """COCO box mAP and mAP_50 in percent. Image ids are positions in ``records``; no
    prediction at all is 0 AP, no target box at all is NaN."""
    keys = ("mAP", "mAP_50")
    if not any(record["gt"]["anns"] for record in records):
        return dict.fromkeys(keys, math.nan)
    if not any(len(record["pred"]["labels"]) for record in records):
        return dict.fromkeys(keys, 0.0)
    coco = CocoMetric(metric="bbox", metric_items=list(keys))
    coco.dataset_meta = {"classes": tuple(classes)}
    summary = coco.compute_metrics([(record["gt"], record["pred"]) for record in records])
    return {key: round(100.0 * summary[f"bbox_{key}"], 1) for key in keys}


def _summarize_seg(areas: list[np.ndarray]) -> dict[str, float]:
    """mIoU (mean over classes with a non-empty union) and aAcc, in percent."""
    total = torch.from_numpy(np.sum(areas, axis=0).astype(np.float64))
    if total[3].sum() == 0:
        return {"mIoU": math.nan, "aAcc": math.nan}
    metrics = IoUMetric.total_area_to_metrics(*total, metrics=["mIoU"])
    return {
        "mIoU": 100.0 * float(np.nanmean(metrics["IoU"])),
        "aAcc": 100.0 * float(metrics["aAcc"]),
    }


SUMMARIZE: dict[str, Callable[[list], dict[str, float]]] = {
    "seg": _summarize_seg,
    "depth": summarize_depth,
    "normals": summarize_normals,
}
