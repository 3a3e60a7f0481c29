"""What every per-pixel classification task shares (semantic segmentation, drivable area, lane
markings): an int64 class-id map with an ignore id, mIoU through mmseg's ``IoUMetric``, logits
exported and arg-maxed, and a coloured overlay."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from mmengine.structures import PixelData
from mmseg.evaluation import IoUMetric
from torch import Tensor

from adperception.data.drawing import Style, absent, overlay
from adperception.tasks.base import MapTask

IGNORE_INDEX = 255


class LabelMapTask(MapTask):
    """Raw sample: ``map_key`` int64 H×W class ids, ``IGNORE_INDEX`` where unlabelled (and where
    padding adds pixels). Metrics: ``mIoU`` (mean over the classes present in targets or
    predictions) and ``aAcc``, in percent, over every labelled pixel of the dataset."""

    dtype = np.int64
    pad_value = IGNORE_INDEX
    primary_metrics: ClassVar[dict[str, int]]
    #: Name of the drawing's title and of the "no ..." tile.
    title: ClassVar[str]
    #: Colours of the classes when the dataset's ``metainfo`` gives none under ``palette_key``.
    default_palette: ClassVar[tuple[tuple[int, int, int], ...]] = ()
    palette_key: ClassVar[str | None] = None
    #: Class ids the overlay leaves undrawn (e.g. "background"), so the image shows through.
    undrawn: ClassVar[tuple[int, ...]] = ()

    @property
    def metric_options(self) -> dict[str, Any]:  # type: ignore[override]
        return {f"{self.name}_classes": None}

    def probe_target(self, size: int, device: torch.device) -> PixelData:
        return PixelData(data=torch.zeros(1, size, size, dtype=torch.long, device=device))

    def measure(self, pred: Mapping, gt: Mapping, sample: Mapping, options: Mapping) -> Any:
        gt_map = gt["data"]
        pred_map = pred["data"].to(gt_map.device)
        if pred_map.shape != gt_map.shape:
            raise ValueError(
                f"{self.name} prediction {tuple(pred_map.shape)} != target {tuple(gt_map.shape)}"
            )
        areas = IoUMetric.intersect_and_union(
            pred_map, gt_map, len(options["classes"]), IGNORE_INDEX
        )
        return torch.stack(areas).to(torch.int64).numpy()

    def summarize(self, records: list[np.ndarray], options: Mapping) -> dict[str, float]:
        total = torch.from_numpy(np.sum(records, axis=0).astype(np.float64))
        if total[3].sum() == 0:
            return {"mIoU": math.nan, "aAcc": math.nan}
        metrics = IoUMetric.total_area_to_metrics(*total, metrics=["mIoU"])
        return {
            "mIoU": 100.0 * float(np.nanmean(metrics["IoU"])),
            "aAcc": 100.0 * float(metrics["aAcc"]),
        }

    @property
    def outputs(self) -> dict[str, str]:  # type: ignore[override]
        return {f"{self.name}_logits": "B×C×H/4×W/4 class logits"}

    def postprocess(self, raw: Mapping[str, Tensor], prepared: Any, meta: Mapping) -> dict:
        """``<name>``: H×W class ids at the original size."""
        logits = raw[f"{self.name}_logits"]
        return {self.name: self.postprocess_map(logits, prepared).argmax(dim=0).numpy()}

    def result_to_sample(self, result: Mapping, *, score_thr: float) -> dict[str, np.ndarray]:
        return {self.map_key: result[self.name]}

    def palette(self, metainfo: Mapping) -> Sequence[Sequence[int]]:
        if self.palette_key and metainfo.get(self.palette_key):
            return metainfo[self.palette_key]
        return self.default_palette

    def draw(self, img: np.ndarray, sample: Mapping, metainfo: Mapping, style: Style) -> np.ndarray:
        if self.map_key not in sample:
            return absent(img, self.title, style)
        ids = np.asarray(sample[self.map_key])
        if self.undrawn:
            ids = np.where(np.isin(ids, self.undrawn), IGNORE_INDEX, ids)
        return overlay(img, ids, self.palette(metainfo), self.classes(metainfo), self.title, style)
