"""Surface normals: unit vectors in the camera frame (x right, y down, z forward)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from torch import Tensor

from adperception.data.drawing import Style, absent, label
from adperception.evaluation.normals import normals_stats, summarize_normals
from adperception.registry import TASKS
from adperception.tasks.base import MapTask


@TASKS.register_module(name="normals")
class Normals(MapTask):
    """``gt_normals_map``: float32 H×W×3 unit normals, all-zero where invalid (and padded).

    Physics: a horizontal flip mirrors the scene about the camera's y-z plane, so x is negated.
    """

    name = "normals"
    gt_field = "gt_normals"
    pred_field = "pred_normals"
    map_key = "gt_normals_map"
    channels = 3
    primary_metrics = {"normals/mean": -1, "normals/within_11.25": +1}
    outputs = {"normals": "B×3×H/4×W/4 unit normals (x right, y down, z forward)"}
    default_group = "geometric"
    default_head = {"type": "NormalsHead", "in_channels": 256, "channels": 128}

    def after_flip(self, results: dict) -> None:
        results[self.map_key] = results[self.map_key] * np.array([-1.0, 1.0, 1.0], np.float32)

    def probe_target(self, size: int, device: torch.device) -> PixelData:
        normals = torch.zeros(3, size, size, device=device)
        normals[1] = -1.0
        return PixelData(data=normals)

    def measure(self, pred: Mapping, gt: Mapping, sample: Mapping, options: Mapping) -> Any:
        gt_map = gt["data"]
        return normals_stats(pred["data"].to(gt_map.device), gt_map)

    def summarize(self, records: list, options: Mapping) -> dict[str, float]:
        return summarize_normals(records)

    def postprocess(self, raw: Mapping[str, Tensor], prepared: Any, meta: Mapping) -> dict:
        """``normals``: H×W×3 unit vectors at the original size."""
        normals = F.normalize(self.postprocess_map(raw["normals"], prepared), dim=0)
        return {"normals": normals.permute(1, 2, 0).contiguous().numpy()}

    def result_to_sample(self, result: Mapping, *, score_thr: float) -> dict[str, np.ndarray]:
        return {self.map_key: result["normals"]}

    def draw(self, img: np.ndarray, sample: Mapping, metainfo: Mapping, style: Style) -> np.ndarray:
        if self.map_key not in sample:
            return absent(img, "normals", style)
        normals = np.asarray(sample[self.map_key], dtype=np.float64)
        valid = np.any(normals != 0, axis=-1, keepdims=True)
        tile = np.where(valid, np.round((normals + 1) / 2 * 255), 0).astype(np.uint8)
        label(tile, "normals: RGB = (n + 1) / 2", (0, 0), style)
        return tile
