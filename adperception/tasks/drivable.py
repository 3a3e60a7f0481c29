"""Drivable area as BDD100K defines it: the ego lane, the other lanes one may drive in, and the
rest (https://doc.bdd100k.com/format.html, "Drivable Area")."""

from __future__ import annotations

from adperception.data.bdd100k_format import DRIVABLE_CLASSES, read_drivable_mask
from adperception.registry import TASKS
from adperception.tasks.base import LayoutFile
from adperception.tasks.label_map import LabelMapTask


@TASKS.register_module(name="drivable")
class DrivableArea(LabelMapTask):
    """``gt_drivable_map``: int64 H×W, 0 = direct (the ego lane), 1 = alternative, 2 =
    background, 255 = ignore (padding). Metrics: mIoU over the three classes and aAcc, as for
    segmentation. In the Cityscapes layout (SynthDrive) its file is BDD100K's mask,
    ``drivable/{split}/{city}/{stem}_drivable.png``."""

    name = "drivable"
    gt_field = "gt_drivable"
    pred_field = "pred_drivable"
    map_key = "gt_drivable_map"
    primary_metrics = {"drivable/mIoU": +1}
    class_key = "drivable_classes"
    default_classes = DRIVABLE_CLASSES
    #: BDD100K's own pictures: direct red, alternative blue.
    default_palette = ((219, 64, 55), (66, 110, 230), (0, 0, 0))
    undrawn = (DRIVABLE_CLASSES.index("background"),)
    title = "drivable area"
    default_group = "semantic"
    default_head = {
        "type": "SegmentationHead",
        "task": "drivable",
        "in_channels": 256,
        "channels": 128,
        "num_classes": 3,
    }
    layout_files = (LayoutFile("drivable_path", "drivable", "_drivable.png", read_drivable_mask),)
