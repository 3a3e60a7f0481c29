"""Detection: boxes and class labels, evaluated by COCO box AP through mmdet's ``CocoMetric``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from mmdet.evaluation import CocoMetric
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmengine.structures import InstanceData
from torch import Tensor

from adperception.data.drawing import BOX_COLOURS, Style, absent, label
from adperception.registry import TASKS
from adperception.tasks.base import Task


@TASKS.register_module(name="det")
class Detection(Task):
    """Raw sample: ``gt_bboxes`` float32 N×4 xyxy in pixel-edge coordinates (a box over columns
    0..9 has x1 = 10) and ``gt_bboxes_labels`` int64 N. Geometry clips boxes to the image and
    drops those that lose their area (``adperception.data.transforms``); flips and zooms move
    them like pixels and nothing else."""

    name = "det"
    gt_field = "gt_instances"
    pred_field = "pred_instances"
    raw_keys = ("gt_bboxes", "gt_bboxes_labels")
    primary_metrics = {"det/mAP_50": +1}
    metric_options = {"det_classes": None}
    outputs = {
        "det_logits": "B×Q×K class logits (K + 1 with background for softmax DETR)",
        "det_boxes": "B×Q×4 boxes, normalised (cx, cy, w, h) in [0, 1]",
    }
    class_key = "det_classes"
    default_group = "semantic"
    element_type = InstanceData

    def check(self, results: Mapping, shape: tuple[int, int], where: str) -> None:
        if ("gt_bboxes" in results) != ("gt_bboxes_labels" in results):
            raise ValueError(f"{where}: gt_bboxes and gt_bboxes_labels must come together")
        boxes, labels = results["gt_bboxes"], results["gt_bboxes_labels"]
        if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != len(labels):
            raise ValueError(
                f"{where}: gt_bboxes {boxes.shape} does not match gt_bboxes_labels {labels.shape}"
            )
        height, width = shape
        inside = (
            (boxes[:, 0] >= 0)
            & (boxes[:, 1] >= 0)
            & (boxes[:, 2] <= width)
            & (boxes[:, 3] <= height)
            & (boxes[:, 0] < boxes[:, 2])
            & (boxes[:, 1] < boxes[:, 3])
        )
        if not inside.all():
            raise ValueError(
                f"{where}: boxes {boxes[~inside].tolist()} are empty or leave the "
                f"{width}×{height} image"
            )

    def in_sample(self, results: Mapping) -> bool:
        return "gt_bboxes" in results or "gt_bboxes_labels" in results

    def pack(self, results: Mapping) -> InstanceData:
        return InstanceData(
            bboxes=torch.from_numpy(np.asarray(results["gt_bboxes"], np.float32).reshape(-1, 4)),
            labels=torch.from_numpy(np.asarray(results["gt_bboxes_labels"], np.int64)),
        )

    def unpack(self, element: InstanceData, *, score_thr: float = 0.0) -> dict[str, np.ndarray]:
        if "scores" in element:
            element = element[element.scores >= score_thr]
        return {
            "gt_bboxes": element.bboxes.detach().cpu().numpy(),
            "gt_bboxes_labels": element.labels.detach().cpu().numpy(),
        }

    def probe_target(self, size: int, device: torch.device) -> InstanceData:
        box = [size / 8, size / 8, size * 5 / 8, size * 3 / 4]
        return InstanceData(
            bboxes=torch.tensor([box], device=device),
            labels=torch.zeros(1, dtype=torch.long, device=device),
        )

    def measure(self, pred: Mapping, gt: Mapping, sample: Mapping, options: Mapping) -> dict:
        """One image in ``CocoMetric``'s (gt, prediction) form, numpy and plain Python only."""
        height, width = sample["img_shape"][:2]
        anns = [
            {"bbox": box, "bbox_label": label}
            for box, label in zip(gt["bboxes"].tolist(), gt["labels"].tolist(), strict=True)
        ]
        return {
            "gt": {"width": int(width), "height": int(height), "anns": anns},
            "pred": {k: pred[k].detach().cpu().numpy() for k in ("bboxes", "scores", "labels")},
        }

    def summarize(self, records: list[dict], options: Mapping) -> dict[str, float]:
        """COCO box mAP and mAP_50 in percent (mmdet's resolution of 0.1 points). Image ids are
        positions in ``records``; no prediction at all is 0 AP, no target box at all is NaN."""
        keys = ("mAP", "mAP_50")
        if not any(record["gt"]["anns"] for record in records):
            return dict.fromkeys(keys, math.nan)
        if not any(len(record["pred"]["labels"]) for record in records):
            return dict.fromkeys(keys, 0.0)
        coco = CocoMetric(metric="bbox", metric_items=list(keys))
        coco.dataset_meta = {"classes": tuple(options["classes"])}
        summary = coco.compute_metrics([(record["gt"], record["pred"]) for record in records])
        return {key: round(100.0 * summary[f"bbox_{key}"], 1) for key in keys}

    def export_forward(
        self, head: torch.nn.Module, feats: list[Tensor], img_shapes: Tensor, size: Sequence[int]
    ) -> tuple[Tensor, ...]:
        return head(feats, padding_mask(img_shapes, size))

    def export_meta(self, head: torch.nn.Module) -> dict:
        bbox_head = head.detector.bbox_head
        return {
            "use_sigmoid": bool(bbox_head.loss_cls.use_sigmoid),
            "num_classes": int(bbox_head.num_classes),
            "max_per_img": int(bbox_head.test_cfg.get("max_per_img", head.detector.num_queries)),
        }

    def postprocess(self, raw: Mapping[str, Tensor], prepared: Any, meta: Mapping) -> dict:
        """``boxes`` N×4 xyxy px at the original size, ``scores``, ``labels``."""
        det = meta["det"]
        boxes, scores, labels = detections(
            raw["det_logits"].float(),
            raw["det_boxes"].float(),
            img_shape=prepared.resized_shape,
            use_sigmoid=det["use_sigmoid"],
            num_classes=det["num_classes"],
            max_per_img=det["max_per_img"],
        )
        w_scale, h_scale = prepared.scale_factor
        boxes = boxes / boxes.new_tensor([w_scale, h_scale, w_scale, h_scale])
        return {"boxes": boxes.numpy(), "scores": scores.numpy(), "labels": labels.numpy()}

    def result_to_sample(self, result: Mapping, *, score_thr: float) -> dict[str, np.ndarray]:
        keep = result["scores"] >= score_thr
        return {"gt_bboxes": result["boxes"][keep], "gt_bboxes_labels": result["labels"][keep]}

    def draw(self, img: np.ndarray, sample: Mapping, metainfo: Mapping, style: Style) -> np.ndarray:
        if not self.in_sample(sample):
            return absent(img, "detection", style)
        names = self.classes(metainfo)
        tile = img.copy()
        boxes = np.asarray(sample["gt_bboxes"], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(sample["gt_bboxes_labels"]).reshape(-1)
        for (x0, y0, x1, y1), label_id in zip(np.round(boxes).astype(int), labels, strict=True):
            colour = BOX_COLOURS[label_id % len(BOX_COLOURS)]
            # Pixel-edge boxes: the last covered column and row are x1 - 1 and y1 - 1.
            cv2.rectangle(tile, (x0, y0), (x1 - 1, y1 - 1), colour, style.line)
            name = names[label_id] if label_id < len(names) else str(label_id)
            label(tile, name, (x0, max(0, y0 - style.row)), style, colour)
        label(tile, f"detection: {len(boxes)} boxes", (0, 0), style)
        return tile


def padding_mask(img_shapes: Tensor, size: Sequence[int]) -> Tensor:
    """B×H×W bool, True outside each image's top-left (h, w) = row of ``img_shapes`` in a batch
    of ``size`` (H, W): the mask mmdet's DETRs build from ``img_shape``, from tensors alone."""
    rows = torch.arange(size[0], device=img_shapes.device)[None, :, None]
    cols = torch.arange(size[1], device=img_shapes.device)[None, None, :]
    return (rows >= img_shapes[:, 0, None, None]) | (cols >= img_shapes[:, 1, None, None])


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
