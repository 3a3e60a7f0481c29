"""Lane markings as BDD100K labels them (https://doc.bdd100k.com/format.html, "Lane Marking"),
evaluated as the driving multi-task literature does (YOLOP, HybridNets): lane / no lane."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from adperception.data.bdd100k_format import (
    LANE_CLASSES,
    decode_lane_mask,
    lane_map,
    read_lane_mask,
)
from adperception.registry import TASKS
from adperception.tasks.base import LayoutFile
from adperception.tasks.label_map import IGNORE_INDEX, LabelMapTask


def read_lanes(path: str, image_shape: tuple[int, int] | None) -> np.ndarray:
    """A BDD100K lane mask decoded to ``gt_lane_map`` ids (0 = no lane, 2 + category)."""
    return lane_map(decode_lane_mask(read_lane_mask(path, image_shape)))


@TASKS.register_module(name="lanes")
class LaneMarking(LabelMapTask):
    """``gt_lane_map``: int64 H×W, 0 = no lane, 2 + k on a lane marking of BDD100K category k
    (``LANE_CLASSES``), 255 = ignore (padding); 1 is a lane of no known category, what a lane /
    no-lane head predicts (``SegmentationHead(binary=True)``, as YOLOP's). Either way a
    prediction above 0 is a lane.

    Metrics over the labelled pixels, lane against no lane, in percent: ``IoU`` of the lane
    class, ``accuracy`` of the lane class (TP / (TP + FN), YOLOP's "Acc", its
    ``lineAccuracy``), and ``aAcc`` (pixel accuracy over both classes).
    """

    name = "lanes"
    gt_field = "gt_lanes"
    pred_field = "pred_lanes"
    map_key = "gt_lane_map"
    primary_metrics = {"lanes/IoU": +1, "lanes/accuracy": +1}
    default_classes = ("no lane", "lane", *LANE_CLASSES)
    #: White lines white, yellow ones gold, kerbs grey, the other categories in tab10 colours.
    default_palette = (
        (0, 0, 0),
        (255, 255, 255),
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (160, 160, 160),
        (148, 103, 189),
        (255, 255, 255),
        (255, 215, 0),
    )
    undrawn = (0,)
    title = "lane markings"
    default_group = "semantic"
    #: YOLOP's form: lane / no lane, cross-entropy plus Dice for the thin lane class (~2.5 % of
    #: SynthDrive's pixels).
    default_head = {
        "type": "SegmentationHead",
        "task": "lanes",
        "binary": True,
        "in_channels": 256,
        "channels": 128,
        "num_classes": 2,
        "loss_decode": [
            {"type": "mmseg.CrossEntropyLoss", "loss_weight": 1.0, "avg_non_ignore": True},
            {"type": "mmseg.DiceLoss", "use_sigmoid": False, "loss_weight": 1.0},
        ],
    }
    layout_files = (LayoutFile("lane_path", "lane", "_lane.png", read_lanes),)

    @property
    def metric_options(self) -> dict[str, Any]:  # type: ignore[override]
        return {}

    def measure(self, pred: Mapping, gt: Mapping, sample: Mapping, options: Mapping) -> Any:
        """[TP, FP, FN, TN] of lane pixels over the labelled ones."""
        gt_map = gt["data"]
        pred_map = pred["data"].to(gt_map.device)
        if pred_map.shape != gt_map.shape:
            raise ValueError(
                f"lanes prediction {tuple(pred_map.shape)} != target {tuple(gt_map.shape)}"
            )
        labelled = gt_map != IGNORE_INDEX
        lane, hit = (gt_map > 0) & labelled, (pred_map > 0) & labelled
        counts = [lane & hit, ~lane & hit & labelled, lane & ~hit, ~lane & ~hit & labelled]
        return np.array([int(torch.count_nonzero(c)) for c in counts], dtype=np.int64)

    def summarize(self, records: list[np.ndarray], options: Mapping) -> dict[str, float]:
        tp, fp, fn, tn = (int(v) for v in np.sum(records, axis=0))

        def share(num: int, den: int) -> float:
            return 100.0 * num / den if den else math.nan

        return {
            "IoU": share(tp, tp + fp + fn),
            "accuracy": share(tp, tp + fn),
            "aAcc": share(tp + tn, tp + fp + fn + tn),
        }
