"""Depth errors: per-image sums over valid pixels, summarised over the whole dataset.

Pixel-weighted, as the MTL literature's NYUv2 evaluations are: every valid pixel of the dataset
counts once, so large images weigh more than small ones. Keeping sums rather than maps keeps what
ranks exchange in distributed evaluation to a few numbers per image. A pixel is valid when its
target lies strictly inside (min_depth, max_depth), the depth literature's evaluation caps
(80 m for driving, 10 m for NYUv2): beyond them a target is no measurement to score against
(Cityscapes' smallest non-zero disparity decodes to about 10^5 m).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: max(d̂/d, d/d̂) below this counts towards ``delta1``.
DELTA1_THRESHOLD = 1.25
SUM_KEYS = ("count", "abs_err", "abs_rel", "sq_err", "delta1")


def depth_sums(
    pred: torch.Tensor, gt: torch.Tensor, *, min_depth: float = 0.0, max_depth: float = math.inf
) -> dict[str, float]:
    """Error sums of one image over its valid pixels (min_depth < gt < max_depth; 0 = invalid).

    ``pred`` and ``gt`` are metres of the same shape (1×H×W). Returns ``count`` (valid pixels),
    ``abs_err`` (Σ|d̂−d|), ``abs_rel`` (Σ|d̂−d|/d), ``sq_err`` (Σ(d̂−d)²) and ``delta1`` (number of
    pixels with d̂ > 0 and max(d̂/d, d/d̂) < 1.25).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"depth prediction {tuple(pred.shape)} != target {tuple(gt.shape)}")
    valid = (gt > 0) & (gt > min_depth) & (gt < max_depth)
    d = gt[valid].double()
    d_hat = pred[valid].double()
    err = (d_hat - d).abs()
    ratio = torch.maximum(d_hat / d, d / d_hat)
    return {
        "count": float(d.numel()),
        "abs_err": err.sum().item(),
        "abs_rel": (err / d).sum().item(),
        "sq_err": err.square().sum().item(),
        "delta1": ((d_hat > 0) & (ratio < DELTA1_THRESHOLD)).sum().item(),
    }


def summarize_depth(sums: Sequence[dict[str, float]]) -> dict[str, float]:
    """Dataset metrics from per-image :func:`depth_sums`.

    ``abs_err`` and ``rmse`` in metres, ``abs_rel`` a fraction, ``delta1`` in percent; NaN when
    no pixel was valid.
    """
    total = {key: math.fsum(s[key] for s in sums) for key in SUM_KEYS}
    count = total["count"]
    if count == 0:
        return dict.fromkeys(("abs_err", "abs_rel", "rmse", "delta1"), math.nan)
    return {
        "abs_err": total["abs_err"] / count,
        "abs_rel": total["abs_rel"] / count,
        "rmse": math.sqrt(total["sq_err"] / count),
        "delta1": 100.0 * total["delta1"] / count,
    }
