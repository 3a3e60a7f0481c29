"""What the updates and losses say over time: the sign-flip rate of a sharing group's update
between measurements, and the loss-trend test that tells a collapsed task from one that is
merely slow. What one Gram matrix says (norms, cosines, conflict) is in ``balancing.stats``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def sign_flip_rate(prev_sign: Tensor, sign: Tensor) -> float:
    """The fraction of parameters whose update changed sign between two measurements, among those
    with a non-zero update at both: high values mean the shared parameters oscillate. 0 when no
    parameter moved at both."""
    if prev_sign.shape != sign.shape:
        raise ValueError(f"sign vectors differ in shape: {prev_sign.shape} vs {sign.shape}")
    product = prev_sign.to(torch.int16) * sign.to(torch.int16)
    moved = int(torch.count_nonzero(product))
    if moved == 0:
        return 0.0
    return int(torch.count_nonzero(product < 0)) / moved


def relative_improvement(losses: Sequence[float]) -> float:
    """How much a loss fell across a window, relative to its level: the least-squares line's drop
    from the first to the last point divided by the window's mean loss. A fitted line rather than
    the two end points, so that one noisy measurement neither hides nor fakes a trend. Negative
    when the loss rises."""
    if len(losses) < 2:
        raise ValueError(f"a trend needs at least 2 losses, got {len(losses)}")
    y = torch.tensor(losses, dtype=torch.float64)
    x = torch.arange(len(y), dtype=torch.float64)
    x = x - x.mean()
    slope = (x * (y - y.mean())).sum() / (x * x).sum()
    level = y.mean().abs()
    if level == 0:
        return 0.0
    return (-slope * (len(y) - 1) / level).item()


def collapsed_tasks(
    histories: Mapping[str, Sequence[float]], *, window: int, tolerance: float
) -> list[str]:
    """Tasks whose loss stopped improving while another task's still improves.

    Each history is a task's loss at successive measurements; a task is judged on its last
    ``window`` values (tasks with fewer are not judged). It is flat when its relative improvement
    (``relative_improvement``) is below ``tolerance``, improving when above. Flat tasks are
    flagged only if some task improves: when every loss is flat, training has converged or
    stalled as a whole, which is not one task being starved by the others.
    """
    if window < 2:
        raise ValueError(f"window must be at least 2 measurements, got {window}")
    trends = {
        task: relative_improvement(history[-window:])
        for task, history in histories.items()
        if len(history) >= window
    }
    if not any(trend > tolerance for trend in trends.values()):
        return []
    return [task for task, trend in trends.items() if trend < tolerance]
