"""Hungarian matching that survives a diverged prediction.

mmdet's ``HungarianAssigner`` hands the summed match costs to scipy's ``linear_sum_assignment``,
which raises on a NaN or infinite entry ("matrix contains invalid numeric entries"). One NaN box
or score (an overflow, a bad batch) then ends the run inside the detector's loss, before the
balancer sees the non-finite loss and skips the step, as it does for every other head.
"""

from __future__ import annotations

import torch
from mmdet.models.task_modules import HungarianAssigner
from mmdet.registry import TASK_UTILS
from mmengine.config import ConfigDict
from torch import Tensor


class _FiniteTotalCost:
    """The sum of the match costs (num_preds × num_gts), its non-finite entries replaced by
    W = max + num_gts · (max − min) + 1 over the finite ones: an assignment that uses k ≥ 1 of
    them costs at least kW + (num_gts − k) min > num_gts · max, more than any assignment of
    finite entries alone, so they are matched only where nothing finite is left. (A huge W
    such as ``finfo.max`` would swamp the finite costs in scipy's dual variables.)"""

    def __init__(self, costs: list) -> None:
        self.costs = costs

    def __call__(self, **kwargs) -> Tensor:
        # summed as mmdet sums them, so that finite costs give its assignment bit for bit
        total = torch.stack([cost(**kwargs) for cost in self.costs]).sum(dim=0)
        finite = torch.isfinite(total)
        if finite.all():
            return total
        if not finite.any():
            return torch.zeros_like(total)
        low, high = total[finite].min(), total[finite].max()
        worst = high + total.shape[1] * (high - low) + 1
        return torch.where(finite, total, worst)


@TASK_UTILS.register_module()
class FiniteHungarianAssigner(HungarianAssigner):
    """mmdet's ``HungarianAssigner`` (same config) on costs made finite.

    With finite costs it assigns exactly as mmdet's. A non-finite prediction is matched only
    where nothing finite is left; its loss stays non-finite (mmdet's classification loss covers
    every query, and its box losses multiply even unmatched ones by a zero weight), so the step
    is skipped and counted by the balancer instead of raising in scipy.
    """

    def __init__(self, match_costs: list[dict | ConfigDict] | dict | ConfigDict) -> None:
        super().__init__(match_costs)
        self.match_costs = [_FiniteTotalCost(self.match_costs)]
