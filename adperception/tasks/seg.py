"""Semantic segmentation: train ids per pixel (19 Cityscapes classes, 13 NYUv2 classes)."""

from __future__ import annotations

from adperception.registry import TASKS
from adperception.tasks.label_map import LabelMapTask


@TASKS.register_module(name="seg")
class Segmentation(LabelMapTask):
    """``gt_seg_map``: train ids, 255 = ignore; class names and colours are the dataset's
    ``metainfo['classes']`` and ``metainfo['palette']`` (mmseg's keys)."""

    name = "seg"
    gt_field = "gt_sem_seg"
    pred_field = "pred_sem_seg"
    map_key = "gt_seg_map"
    primary_metrics = {"seg/mIoU": +1}
    class_key = "classes"
    palette_key = "palette"
    title = "segmentation"
    default_group = "semantic"
    default_head = {
        "type": "SegmentationHead",
        "task": "seg",
        "in_channels": 256,
        "channels": 128,
        "num_classes": 19,
    }
