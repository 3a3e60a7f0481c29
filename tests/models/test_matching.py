"""FiniteHungarianAssigner: mmdet's assignment on finite costs; non-finite predictions matched
last instead of raising in scipy."""

from __future__ import annotations

import pytest
import torch
from mmdet.registry import TASK_UTILS
from mmengine.structures import InstanceData

import adperception.models  # noqa: F401  (registers FiniteHungarianAssigner)

IMG_META = dict(img_shape=(96, 128))
#: DINO's matching costs (configs/_base_/detectors/dino.py)
COSTS = [
    dict(type="FocalLossCost", weight=2.0),
    dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
    dict(type="IoUCost", iou_mode="giou", weight=2.0),
]


def _assigner(kind: str):
    return TASK_UTILS.build(dict(type=kind, match_costs=COSTS))


def _instances(num_preds: int, num_gts: int) -> tuple[InstanceData, InstanceData]:
    """Predictions as DETR heads hand them to the assigner: class logits Q×8 and xyxy pixel
    boxes; ground truth boxes and labels."""
    gen = torch.Generator().manual_seed(0)

    def boxes(n: int) -> torch.Tensor:
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([96.0, 64.0])
        wh = 4 + torch.rand(n, 2, generator=gen) * 28
        return torch.cat([xy, xy + wh], 1)

    preds = InstanceData(scores=torch.randn(num_preds, 8, generator=gen), bboxes=boxes(num_preds))
    gts = InstanceData(bboxes=boxes(num_gts), labels=torch.randint(0, 8, (num_gts,), generator=gen))
    return preds, gts


def test_finite_costs_assign_as_mmdet() -> None:
    preds, gts = _instances(30, 6)
    ours = _assigner("FiniteHungarianAssigner").assign(preds, gts, IMG_META)
    mmdet = _assigner("HungarianAssigner").assign(preds, gts, IMG_META)
    assert torch.equal(ours.gt_inds, mmdet.gt_inds)
    assert torch.equal(ours.labels, mmdet.labels)


@pytest.mark.parametrize(
    ("field", "value"),
    [("scores", float("nan")), ("bboxes", float("nan")), ("bboxes", float("inf"))],
)
def test_non_finite_predictions_are_matched_last(field: str, value: float) -> None:
    """With enough finite predictions, the assignment is mmdet's on the finite ones alone and
    every non-finite prediction is background; mmdet's own assigner raises on the same input.
    (An infinite logit is no such prediction: its focal cost is finite.)"""
    preds, gts = _instances(20, 5)
    bad = torch.tensor([0, 3, 7, 12, 19])
    values = getattr(preds, field).clone()
    values[bad] = value
    setattr(preds, field, values)
    with pytest.raises(ValueError, match="invalid numeric entries"):
        _assigner("HungarianAssigner").assign(preds, gts, IMG_META)

    ours = _assigner("FiniteHungarianAssigner").assign(preds, gts, IMG_META)
    finite = torch.ones(20, dtype=torch.bool)
    finite[bad] = False
    alone = _assigner("HungarianAssigner").assign(preds[finite], gts, IMG_META)
    assert torch.equal(ours.gt_inds[finite], alone.gt_inds)
    assert (ours.gt_inds[bad] == 0).all()
