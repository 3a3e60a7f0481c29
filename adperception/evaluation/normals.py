"""Surface-normal angular errors: per-image statistics, summarised over the whole dataset.

Pixel-weighted, as the MTL literature's NYUv2 evaluations are: every valid pixel of the dataset
counts once. The median comes from a histogram of angles in ``BIN_WIDTH`` bins, so no pixel is kept
and ranks exchange a few kilobytes per image; it is within ``BIN_WIDTH / 2`` of the exact median.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Angles (degrees) below which a pixel counts towards ``within_{t}``.
THRESHOLDS = (11.25, 22.5, 30.0)
#: Histogram bin width in degrees; 18000 bins cover [0°, 180°].
BIN_WIDTH = 0.01
NUM_BINS = round(180 / BIN_WIDTH)


def angular_errors(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Angles in degrees between ``pred`` and ``gt`` (3×H×W) at the valid pixels, 1-D float64.

    A pixel is valid where ``gt`` is not all-zero. Both vectors are normalised first; a zero
    prediction is 90° from anything.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"normals prediction {tuple(pred.shape)} != target {tuple(gt.shape)}")
    valid = gt.ne(0).any(dim=0)
    p = F.normalize(pred.permute(1, 2, 0)[valid].double(), dim=1)
    g = F.normalize(gt.permute(1, 2, 0)[valid].double(), dim=1)
    return torch.rad2deg(torch.acos((p * g).sum(dim=1).clamp(-1.0, 1.0)))


def normals_stats(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, Any]:
    """Statistics of one image: ``count`` of valid pixels, ``angle_sum`` (degrees), ``within``
    (pixel counts below each of ``THRESHOLDS``), and the angle histogram as its non-empty
    ``bins`` (int32 indices) and their ``bin_counts`` (int64)."""
    angles = angular_errors(pred, gt)
    hist = torch.bincount((angles / BIN_WIDTH).long().clamp(max=NUM_BINS - 1), minlength=NUM_BINS)
    bins = hist.nonzero().squeeze(1)
    return {
        "count": angles.numel(),
        "angle_sum": angles.sum().item(),
        "within": np.array([(angles < t).sum().item() for t in THRESHOLDS], dtype=np.int64),
        "bins": bins.to(torch.int32).cpu().numpy(),
        "bin_counts": hist[bins].cpu().numpy(),
    }


def summarize_normals(stats: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Dataset metrics from per-image :func:`normals_stats`: ``mean`` and ``median`` in degrees,
    ``within_11.25``, ``within_22.5``, ``within_30`` in percent; NaN when no pixel was valid."""
    keys = ("mean", "median", *(f"within_{t:g}" for t in THRESHOLDS))
    count = sum(s["count"] for s in stats)
    if count == 0:
        return dict.fromkeys(keys, math.nan)
    hist = np.zeros(NUM_BINS, dtype=np.int64)
    for s in stats:
        hist[s["bins"]] += s["bin_counts"]
    within = 100.0 * np.sum([s["within"] for s in stats], axis=0) / count
    values = (math.fsum(s["angle_sum"] for s in stats) / count, _histogram_median(hist), *within)
    return {key: float(value) for key, value in zip(keys, values, strict=True)}


def _histogram_median(hist: np.ndarray) -> float:
    """Median of the binned angles: the mean of the centres of the bins holding the two middle
    order statistics (they coincide for an odd count)."""
    cumulative = np.cumsum(hist)
    count = cumulative[-1]
    lower = np.searchsorted(cumulative, (count - 1) // 2, side="right")
    upper = np.searchsorted(cumulative, count // 2, side="right")
    return float((lower + upper + 1) / 2 * BIN_WIDTH)
