"""MTLDataSample: typed fields, and the heads of mmdet and mmseg read packed samples as-is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData, PixelData

from adperception.data.structures import MTLDataSample
from adperception.data.transforms import PackMTLInputs

FIELDS = {
    "gt_instances": InstanceData,
    "gt_sem_seg": PixelData,
    "gt_depth": PixelData,
    "gt_normals": PixelData,
    "pred_instances": InstanceData,
    "pred_sem_seg": PixelData,
    "pred_depth": PixelData,
    "pred_normals": PixelData,
}


@pytest.mark.parametrize(("name", "dtype"), FIELDS.items())
def test_field_is_typed_listed_and_deletable(name: str, dtype: type) -> None:
    sample = MTLDataSample()
    value = dtype()
    setattr(sample, name, value)
    assert getattr(sample, name) is value
    assert name in sample and sample.keys() == [name]
    wrong = PixelData if dtype is InstanceData else InstanceData
    with pytest.raises(AssertionError):
        setattr(sample, name, wrong())
    delattr(sample, name)
    assert name not in sample and sample.keys() == []


def packed(seed: int, h: int = 64, w: int = 64) -> MTLDataSample:
    """A packed sample with two boxes and a seg map with ignored pixels."""
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, 19, (h, w))
    seg[:4] = 255
    results = {
        "img": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "img_path": f"{seed}.png",
        "sample_idx": seed,
        "ori_shape": (h, w),
        "gt_seg_map": seg,
        "gt_bboxes": np.array([[4, 8, 40, 50], [30, 10, 60, 30]], dtype=np.float32),
        "gt_bboxes_labels": np.array([2, 0]),
    }
    return PackMTLInputs()(results)["data_samples"]


def test_mmseg_fpn_head_loss_reads_packed_samples() -> None:
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    torch.manual_seed(0)
    head = MODELS.build(
        dict(
            type="FPNHead",
            in_channels=[8, 8],
            in_index=[0, 1],
            feature_strides=[4, 8],
            channels=8,
            num_classes=19,
            dropout_ratio=0.0,
            norm_cfg=dict(type="BN"),
            loss_decode=dict(type="CrossEntropyLoss", avg_non_ignore=True, loss_weight=1.0),
        )
    )
    feats = [torch.rand(2, 8, 16, 16), torch.rand(2, 8, 8, 8)]
    samples = [packed(0), packed(1)]
    logits = head(feats)
    losses = head.loss(feats, samples, train_cfg={})
    target = torch.cat([s.gt_sem_seg.data for s in samples])
    expected = F.cross_entropy(
        F.interpolate(logits, size=(64, 64), mode="bilinear"), target, ignore_index=255
    )
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_mmdet_detr_head_loss_reads_packed_samples() -> None:
    from mmdet.registry import MODELS

    init_default_scope("mmdet")
    torch.manual_seed(0)
    dims, queries = 16, 6
    # DETRHead's defaults: weighted CE with a no-object class, L1 + GIoU, Hungarian matching.
    head = MODELS.build(dict(type="DETRHead", num_classes=8, embed_dims=dims))
    hidden = torch.rand(2, 2, queries, dims, requires_grad=True)  # layers × batch × queries × dims
    empty = packed(1)
    empty.gt_instances = empty.gt_instances[:0]
    losses = head.loss(hidden, [packed(0), empty])
    assert {"loss_cls", "loss_bbox", "loss_iou"} <= losses.keys()
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(hidden.grad).all() and hidden.grad.abs().sum() > 0
