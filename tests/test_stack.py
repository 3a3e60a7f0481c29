"""Smoke tests of the compiled OpenMMLab stack that every model in this repo stands on."""

from __future__ import annotations

import pytest
import torch
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData, PixelData


def test_mmcv_nms_matches_torchvision() -> None:
    from mmcv.ops import nms
    from torchvision.ops import nms as tv_nms

    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(64, 2, generator=gen) * 50
    wh = torch.rand(64, 2, generator=gen) * 20 + 2
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(64, generator=gen)
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    expected = tv_nms(boxes, scores, 0.5)
    assert torch.equal(keep.sort().values, expected.sort().values)


def _tiny_detr() -> torch.nn.Module:
    from mmdet.registry import MODELS

    init_default_scope("mmdet")
    dims = 32
    layer = dict(
        self_attn_cfg=dict(embed_dims=dims, num_heads=4, dropout=0.0, batch_first=True),
        ffn_cfg=dict(embed_dims=dims, feedforward_channels=64, ffn_drop=0.0),
    )
    return MODELS.build(
        dict(
            type="DETR",
            num_queries=10,
            data_preprocessor=dict(type="DetDataPreprocessor", pad_size_divisor=1),
            backbone=dict(
                type="ResNet", depth=18, num_stages=4, out_indices=(3,), norm_cfg=dict(type="BN")
            ),
            neck=dict(
                type="ChannelMapper",
                in_channels=[512],
                out_channels=dims,
                kernel_size=1,
                num_outs=1,
            ),
            encoder=dict(num_layers=1, layer_cfg=layer),
            decoder=dict(
                num_layers=2,
                layer_cfg=dict(**layer, cross_attn_cfg=layer["self_attn_cfg"]),
                return_intermediate=True,
            ),
            positional_encoding=dict(num_feats=dims // 2, normalize=True),
            bbox_head=dict(
                type="DETRHead",
                num_classes=8,
                embed_dims=dims,
                loss_cls=dict(
                    type="CrossEntropyLoss",
                    bg_cls_weight=0.1,
                    class_weight=1.0,
                    use_sigmoid=False,
                    loss_weight=1.0,
                ),
            ),
            train_cfg=dict(
                assigner=dict(
                    type="HungarianAssigner",
                    match_costs=[
                        dict(type="ClassificationCost", weight=1.0),
                        dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
                        dict(type="IoUCost", iou_mode="giou", weight=2.0),
                    ],
                )
            ),
            test_cfg=dict(max_per_img=10),
        )
    )


def test_mmdet_detr_loss_and_predict_on_cpu() -> None:
    from mmdet.structures import DetDataSample

    torch.manual_seed(0)
    model = _tiny_detr()
    h, w = 64, 96
    sample = DetDataSample(
        metainfo=dict(img_shape=(h, w), batch_input_shape=(h, w), scale_factor=(1.0, 1.0))
    )
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[4.0, 8.0, 40.0, 50.0], [50.0, 10.0, 90.0, 30.0]]),
        labels=torch.tensor([2, 0]),
    )
    inputs = torch.rand(1, 3, h, w)
    losses = model.loss(inputs, [sample])
    assert {"loss_cls", "loss_bbox", "loss_iou"} <= losses.keys()
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.bbox_head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    model.eval()
    with torch.no_grad():
        (pred,) = model.predict(inputs, [sample])
    boxes = pred.pred_instances.bboxes
    assert boxes.shape == (10, 4)
    assert (boxes[:, 2:] >= boxes[:, :2]).all() and boxes.max() <= max(h, w)


def test_mmseg_fpn_head_runs() -> None:
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    init_default_scope("mmseg")
    head = MODELS.build(
        dict(
            type="FPNHead",
            in_channels=[16, 16, 16, 16],
            in_index=[0, 1, 2, 3],
            feature_strides=[4, 8, 16, 32],
            channels=16,
            num_classes=19,
            dropout_ratio=0.0,
            norm_cfg=dict(type="BN", requires_grad=True),
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        )
    )
    feats = [torch.rand(2, 16, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    logits = head(feats)
    assert logits.shape == (2, 19, 16, 16)
    samples = []
    for _ in range(2):
        s = SegDataSample(metainfo=dict(img_shape=(64, 64)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, 64, 64)))
        samples.append(s)
    losses = head.loss(feats, samples, train_cfg=None)
    assert losses["loss_ce"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(
            torch.nn.functional.interpolate(logits, size=(64, 64), mode="bilinear"),
            torch.stack([s.gt_sem_seg.data[0] for s in samples]),
        ).item(),
        rel=1e-4,
    )
