"""Metric depth in metres per pixel, 0 where invalid."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import torch
from matplotlib import colormaps
from mmengine.structures import PixelData
from torch import Tensor

from adperception.data.drawing import Style, absent, label, scale_bar
from adperception.evaluation.depth import depth_sums, summarize_depth
from adperception.registry import TASKS
from adperception.tasks.base import MapTask, chw

DEPTH_CMAP = "magma"


@TASKS.register_module(name="depth")
class Depth(MapTask):
    """``gt_depth_map``: float32 H×W metres, 0 = invalid (also what padding writes).

    Physics: a uniform zoom by s makes the scene look s times nearer, so depth is divided by
    the realised zoom. Evaluation happens at the original size in the original metres, as mmseg
    evaluates at ``ori_shape``: the test ``Resize`` keeps the map as it was
    (``ori_gt_depth_map``), and that is what is packed.
    """

    name = "depth"
    gt_field = "gt_depth"
    pred_field = "pred_depth"
    map_key = "gt_depth_map"
    primary_metrics = {"depth/abs_rel": -1, "depth/rmse": -1}
    metric_options = {"min_depth": 0.0, "max_depth": math.inf}
    outputs = {"depth": "B×1×H/4×W/4 metric depth in metres (> 0)"}
    default_group = "geometric"
    default_head = {"type": "DepthHead", "in_channels": 256, "channels": 128}

    def after_zoom(self, results: dict, zoom: float) -> None:
        results[self.map_key] = results[self.map_key] / np.float32(zoom)

    def keep_original(self, results: dict) -> None:
        results.setdefault(f"ori_{self.map_key}", results[self.map_key])

    def pack(self, results: Mapping) -> PixelData:
        depth = results.get(f"ori_{self.map_key}", results[self.map_key])
        return PixelData(data=chw(depth, np.float32))

    def probe_target(self, size: int, device: torch.device) -> PixelData:
        return PixelData(data=torch.full((1, size, size), 5.0, device=device))

    def check_options(self, options: Mapping) -> None:
        if not 0 <= options["min_depth"] < options["max_depth"]:
            raise ValueError(
                f"need 0 <= min_depth < max_depth, got {options['min_depth']}, "
                f"{options['max_depth']}"
            )

    def measure(self, pred: Mapping, gt: Mapping, sample: Mapping, options: Mapping) -> Any:
        gt_map = gt["data"]
        return depth_sums(
            pred["data"].to(gt_map.device),
            gt_map,
            min_depth=options["min_depth"],
            max_depth=options["max_depth"],
        )

    def summarize(self, records: list, options: Mapping) -> dict[str, float]:
        return summarize_depth(records)

    def export_meta(self, head: torch.nn.Module) -> dict:
        """The head's caps, which ``predict`` clamps to; so does ``postprocess``."""
        return {
            "min_depth": float(head.min_depth),
            "max_depth": None if math.isinf(head.max_depth) else float(head.max_depth),
        }

    def postprocess(self, raw: Mapping[str, Tensor], prepared: Any, meta: Mapping) -> dict:
        """``depth``: H×W metres at the original size. The prediction at zoom s is the true
        depth / s; the axes' zooms differ by rounding, so depth follows their geometric mean."""
        w_scale, h_scale = prepared.scale_factor
        depth = self.postprocess_map(raw["depth"], prepared)[0] * math.sqrt(w_scale * h_scale)
        caps = meta.get("depth")
        if caps is not None:
            depth = depth.clamp(caps["min_depth"], caps["max_depth"])
        return {"depth": depth.numpy()}

    def result_to_sample(self, result: Mapping, *, score_thr: float) -> dict[str, np.ndarray]:
        return {self.map_key: result["depth"]}

    def draw(self, img: np.ndarray, sample: Mapping, metainfo: Mapping, style: Style) -> np.ndarray:
        """Log depth, near bright and far dark, with a scale bar in metres."""
        if self.map_key not in sample:
            return absent(img, "depth", style)
        depth = np.asarray(sample[self.map_key], dtype=np.float64)
        if depth.shape != img.shape[:2]:  # a test sample's depth is at its original size
            depth = cv2.resize(depth, img.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        valid = depth > 0
        tile = np.zeros_like(img)
        if not valid.any():
            label(tile, "depth: no valid pixel", (0, 0), style)
            return tile
        near, far = np.percentile(depth[valid], [1, 99])
        far = max(far, near * 1.01)
        cmap = colormaps[DEPTH_CMAP]

        def colour(d: np.ndarray) -> np.ndarray:
            t = np.clip(np.log(d / near) / np.log(far / near), 0, 1)
            return np.round(cmap(1 - t)[..., :3] * 255).astype(np.uint8)

        tile[valid] = colour(depth[valid])
        label(tile, "depth (log scale)", (0, 0), style)
        scale_bar(tile, near, far, colour, style, "m")
        return tile
