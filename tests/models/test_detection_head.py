"""DetectionHead: mmdet's DETR family on FPN-shaped features and real packed data samples.

The detector configs below mirror mmdet 3.3.0's configs/{detr, conditional_detr, dab_detr,
deformable_detr, dino} at 2 encoder / 2 decoder layers and 100 queries, minus backbone, neck and
data_preprocessor; they are meant to be pasted into configs/_base_/models/ as
``dict(type="DetectionHead", detector=..., num_classes=8, in_channels=EMBED)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmdet.registry import MODELS as MMDET_MODELS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_overlaps
from mmengine.registry import DefaultScope, init_default_scope

from adperception.data.structures import MTLDataSample
from adperception.data.transforms import PackMTLInputs
from adperception.models.heads.detection import DetectionHead
from adperception.registry import MODELS

EMBED = 256
NUM_CLASSES = 8
LAYERS = 2
QUERIES = 100
STRIDES = (4, 8, 16, 32)

_HUNGARIAN_SOFTMAX = dict(
    type="HungarianAssigner",
    match_costs=[
        dict(type="ClassificationCost", weight=1.0),
        dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
        dict(type="IoUCost", iou_mode="giou", weight=2.0),
    ],
)
_HUNGARIAN_FOCAL = dict(
    type="HungarianAssigner",
    match_costs=[
        dict(type="FocalLossCost", weight=2.0),
        dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
        dict(type="IoUCost", iou_mode="giou", weight=2.0),
    ],
)
_FOCAL = dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0)
_BOX_LOSSES = dict(
    loss_bbox=dict(type="L1Loss", loss_weight=5.0), loss_iou=dict(type="GIoULoss", loss_weight=2.0)
)
_DETR_ATTN = dict(embed_dims=EMBED, num_heads=8, dropout=0.1, batch_first=True)
_DETR_FFN = dict(
    embed_dims=EMBED,
    feedforward_channels=2048,
    num_fcs=2,
    ffn_drop=0.1,
    act_cfg=dict(type="ReLU", inplace=True),
)

DETR = dict(
    type="DETR",
    num_queries=QUERIES,
    encoder=dict(num_layers=LAYERS, layer_cfg=dict(self_attn_cfg=_DETR_ATTN, ffn_cfg=_DETR_FFN)),
    decoder=dict(
        num_layers=LAYERS,
        layer_cfg=dict(self_attn_cfg=_DETR_ATTN, cross_attn_cfg=_DETR_ATTN, ffn_cfg=_DETR_FFN),
        return_intermediate=True,
    ),
    positional_encoding=dict(num_feats=EMBED // 2, normalize=True),
    bbox_head=dict(
        type="DETRHead",
        embed_dims=EMBED,
        loss_cls=dict(
            type="CrossEntropyLoss",
            bg_cls_weight=0.1,
            use_sigmoid=False,
            loss_weight=1.0,
            class_weight=1.0,
        ),
        **_BOX_LOSSES,
    ),
    train_cfg=dict(assigner=_HUNGARIAN_SOFTMAX),
    test_cfg=dict(max_per_img=QUERIES),
)

CONDITIONAL_DETR = dict(
    DETR,
    type="ConditionalDETR",
    decoder=dict(
        num_layers=LAYERS,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=EMBED, num_heads=8, attn_drop=0.1, cross_attn=False),
            cross_attn_cfg=dict(embed_dims=EMBED, num_heads=8, attn_drop=0.1, cross_attn=True),
            ffn_cfg=_DETR_FFN,
        ),
        return_intermediate=True,
    ),
    bbox_head=dict(type="ConditionalDETRHead", embed_dims=EMBED, loss_cls=_FOCAL, **_BOX_LOSSES),
    train_cfg=dict(assigner=_HUNGARIAN_FOCAL),
)

_DAB_FFN = dict(
    embed_dims=EMBED,
    feedforward_channels=2048,
    num_fcs=2,
    ffn_drop=0.0,
    act_cfg=dict(type="PReLU"),
)
DAB_DETR = dict(
    type="DABDETR",
    num_queries=QUERIES,
    with_random_refpoints=False,
    num_patterns=0,
    encoder=dict(
        num_layers=LAYERS,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=EMBED, num_heads=8, dropout=0.0, batch_first=True),
            ffn_cfg=_DAB_FFN,
        ),
    ),
    decoder=dict(
        num_layers=LAYERS,
        query_dim=4,
        query_scale_type="cond_elewise",
        with_modulated_hw_attn=True,
        layer_cfg=dict(
            self_attn_cfg=dict(
                embed_dims=EMBED, num_heads=8, attn_drop=0.0, proj_drop=0.0, cross_attn=False
            ),
            cross_attn_cfg=dict(
                embed_dims=EMBED, num_heads=8, attn_drop=0.0, proj_drop=0.0, cross_attn=True
            ),
            ffn_cfg=_DAB_FFN,
        ),
        return_intermediate=True,
    ),
    positional_encoding=dict(num_feats=EMBED // 2, temperature=20, normalize=True),
    bbox_head=dict(
        type="DABDETRHead",
        embed_dims=EMBED,
        loss_cls=dict(_FOCAL, loss_weight=1.0),
        **_BOX_LOSSES,
    ),
    train_cfg=dict(
        assigner=dict(
            _HUNGARIAN_FOCAL,
            match_costs=[
                dict(type="FocalLossCost", weight=2.0, eps=1e-8),
                *_HUNGARIAN_FOCAL["match_costs"][1:],
            ],
        )
    ),
    test_cfg=dict(max_per_img=QUERIES),
)

# Multi-level: reads all 4 FPN maps (strides 4-32; mmdet's ResNet configs use 8-64).
DEFORMABLE_DETR = dict(
    type="DeformableDETR",
    num_queries=QUERIES,
    num_feature_levels=4,
    with_box_refine=False,
    as_two_stage=False,
    encoder=dict(
        num_layers=LAYERS,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=EMBED, batch_first=True),
            ffn_cfg=dict(embed_dims=EMBED, feedforward_channels=1024, ffn_drop=0.1),
        ),
    ),
    decoder=dict(
        num_layers=LAYERS,
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=EMBED, num_heads=8, dropout=0.1, batch_first=True),
            cross_attn_cfg=dict(embed_dims=EMBED, batch_first=True),
            ffn_cfg=dict(embed_dims=EMBED, feedforward_channels=1024, ffn_drop=0.1),
        ),
        post_norm_cfg=None,
    ),
    positional_encoding=dict(num_feats=EMBED // 2, normalize=True, offset=-0.5),
    bbox_head=dict(
        type="DeformableDETRHead",
        embed_dims=EMBED,
        sync_cls_avg_factor=True,
        loss_cls=_FOCAL,
        **_BOX_LOSSES,
    ),
    train_cfg=dict(assigner=_HUNGARIAN_FOCAL),
    test_cfg=dict(max_per_img=QUERIES),
)

DINO = dict(
    type="DINO",
    num_queries=QUERIES,
    with_box_refine=True,
    as_two_stage=True,
    encoder=dict(
        num_layers=LAYERS,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=EMBED, num_levels=4, dropout=0.0),
            ffn_cfg=dict(embed_dims=EMBED, feedforward_channels=2048, ffn_drop=0.0),
        ),
    ),
    decoder=dict(
        num_layers=LAYERS,
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=EMBED, num_heads=8, dropout=0.0),
            cross_attn_cfg=dict(embed_dims=EMBED, num_levels=4, dropout=0.0),
            ffn_cfg=dict(embed_dims=EMBED, feedforward_channels=2048, ffn_drop=0.0),
        ),
        post_norm_cfg=None,
    ),
    positional_encoding=dict(num_feats=EMBED // 2, normalize=True, offset=0.0, temperature=20),
    bbox_head=dict(
        type="DINOHead",
        embed_dims=EMBED,
        sync_cls_avg_factor=True,
        loss_cls=dict(_FOCAL, loss_weight=1.0),
        **_BOX_LOSSES,
    ),
    dn_cfg=dict(
        label_noise_scale=0.5,
        box_noise_scale=1.0,
        group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=QUERIES),
    ),
    train_cfg=dict(assigner=_HUNGARIAN_FOCAL),
    test_cfg=dict(max_per_img=QUERIES),
)

DETECTORS = {
    "detr": DETR,
    "conditional_detr": CONDITIONAL_DETR,
    "dab_detr": DAB_DETR,
    "deformable_detr": DEFORMABLE_DETR,
    "dino": DINO,
}
MULTI_LEVEL = {"deformable_detr", "dino"}


#: Transformer width of the tests' models: the configs' sizes cost seconds per step on CPU.
#: mmdet 3.3.0's ConditionalDETR and DINO decoders call coordinate_to_encoding with its default
#: 128 features per coordinate, which only fits embed_dims = 256: they keep EMBED.
WIDTH = 64
FULL_WIDTH_ONLY = {"conditional_detr", "dino"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These tiny models run several times faster on one thread than on contended cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _narrowed(cfg: object, width: int) -> object:
    """``cfg`` with every transformer width scaled from EMBED to ``width``."""
    if isinstance(cfg, list):
        return [_narrowed(item, width) for item in cfg]
    if not isinstance(cfg, dict):
        return cfg
    out = {key: _narrowed(value, width) for key, value in cfg.items()}
    for key in ("embed_dims", "num_feats", "feedforward_channels"):
        if key in out:
            out[key] = out[key] * width // EMBED
    return out


def _head(name: str, width: int | None = None) -> DetectionHead:
    """The registered head on DETECTORS[name] at ``width`` (default: the narrowest that runs)."""
    width = width or (EMBED if name in FULL_WIDTH_ONLY else WIDTH)
    torch.manual_seed(0)
    init_default_scope("adperception")
    head = MODELS.build(
        dict(
            type="DetectionHead",
            detector=_narrowed(DETECTORS[name], width),
            num_classes=NUM_CLASSES,
            in_channels=width,
        )
    )
    head.init_weights()
    return head


def _batch(
    shapes: list[tuple[int, int]], boxes: list[np.ndarray], labels: list[np.ndarray]
) -> tuple[list[MTLDataSample], tuple[int, int]]:
    """Real packed samples through mmdet's DetDataPreprocessor; returns them and (Hp, Wp)."""
    rng = np.random.default_rng(0)
    packed = [
        PackMTLInputs()(
            dict(
                img=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                gt_bboxes=np.asarray(b, np.float32).reshape(-1, 4),
                gt_bboxes_labels=np.asarray(lab, np.int64),
                # As after a 2x downscale: boxes must stay in img_shape pixels, not go back.
                scale_factor=(0.5, 0.5),
            )
        )
        for (h, w), b, lab in zip(shapes, boxes, labels, strict=True)
    ]
    preprocessor = DetDataPreprocessor(
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=False,
        pad_size_divisor=32,
    )
    data = preprocessor(
        dict(
            inputs=[p["inputs"] for p in packed], data_samples=[p["data_samples"] for p in packed]
        ),
        training=True,
    )
    return data["data_samples"], tuple(data["inputs"].shape[-2:])


def _mixed_batch() -> tuple[list[MTLDataSample], tuple[int, int]]:
    """Three images of different sizes (so padding masks matter), one without boxes."""
    return _batch(
        [(64, 96), (48, 80), (40, 64)],
        [
            [[4, 6, 30, 40], [50, 10, 90, 60], [20, 30, 44, 62]],
            [[10, 5, 40, 45], [45, 20, 78, 47]],
            np.zeros((0, 4)),
        ],
        [[2, 0, 7], [2, 3], []],
    )


def _feats(batch: int, pad_shape: tuple[int, int], width: int) -> list[torch.Tensor]:
    """Seeded FPN-shaped maps B×width×(Hp/s)×(Wp/s)."""
    gen = torch.Generator().manual_seed(0)
    return [
        torch.randn(
            batch, width, pad_shape[0] // s, pad_shape[1] // s, generator=gen
        ).requires_grad_()
        for s in STRIDES
    ]


def _expected_loss_keys(name: str) -> set[str]:
    terms = ("cls", "bbox", "iou")
    keys = {f"loss_{t}" for t in terms} | {
        f"loss_d{i}_{t}" for i in range(LAYERS - 1) for t in terms
    }
    if name == "dino":
        keys |= {f"loss_enc_{t}" for t in terms} | {f"loss_dn_{t}" for t in terms}
        keys |= {f"loss_d{i}_dn_{t}" for i in range(LAYERS - 1) for t in terms}
    return keys


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_loss_keys_finite_and_backprop_into_read_levels(name: str) -> None:
    head = _head(name)
    samples, pad_shape = _mixed_batch()
    feats = _feats(len(samples), pad_shape, head.detector.embed_dims)
    losses = head.loss(feats, samples)
    assert set(losses) == _expected_loss_keys(name)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    read = range(4) if name in MULTI_LEVEL else [3]
    for level, feat in enumerate(feats):
        if level in read:
            assert feat.grad is not None and torch.isfinite(feat.grad).all()
            assert feat.grad.abs().sum() > 0
        else:
            assert feat.grad is None


def test_three_level_detector_reads_strides_8_to_32() -> None:
    """num_feature_levels=3 (mmdet's C3-C5 setting) skips the costly stride-4 map."""
    cfg = _narrowed(DEFORMABLE_DETR, WIDTH)
    cfg["num_feature_levels"] = 3
    cfg["encoder"]["layer_cfg"]["self_attn_cfg"]["num_levels"] = 3
    cfg["decoder"]["layer_cfg"]["cross_attn_cfg"]["num_levels"] = 3
    head = DetectionHead(detector=cfg, num_classes=NUM_CLASSES, in_channels=WIDTH)
    head.init_weights()
    samples, pad_shape = _mixed_batch()
    feats = _feats(len(samples), pad_shape, WIDTH)
    sum(head.loss(feats, samples).values()).backward()
    assert feats[0].grad is None
    assert all(feat.grad.abs().sum() > 0 for feat in feats[1:])


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_predict_boxes_inside_img_shape(name: str) -> None:
    head = _head(name).eval()
    samples, pad_shape = _mixed_batch()
    with torch.no_grad():
        head.predict(_feats(len(samples), pad_shape, head.detector.embed_dims), samples)
    for sample in samples:
        pred = sample.pred_instances
        h, w = sample.img_shape
        assert len(pred) == QUERIES  # max_per_img, which is <= num_queries x classes
        assert pred.bboxes.shape == (QUERIES, 4)
        assert (pred.bboxes >= 0).all()
        assert (pred.bboxes[:, 0::2] <= w).all() and (pred.bboxes[:, 1::2] <= h).all()
        assert (pred.bboxes[:, :2] <= pred.bboxes[:, 2:]).all()
        assert ((pred.scores >= 0) & (pred.scores <= 1)).all()
        assert ((pred.labels >= 0) & (pred.labels < NUM_CLASSES)).all()


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_forward_shapes_and_agreement_with_predict(name: str) -> None:
    """On an unpadded image, predict's best box is forward's best query scaled to pixels."""
    head = _head(name).eval()
    samples, pad_shape = _batch([(64, 96)], [[[8, 8, 40, 50]]], [[1]])
    feats = _feats(1, pad_shape, head.detector.embed_dims)
    with torch.no_grad():
        cls_logits, boxes = head(feats)
        head.predict(feats, samples)
    num_logits = NUM_CLASSES + 1 if name == "detr" else NUM_CLASSES  # softmax adds background
    assert cls_logits.shape == (1, QUERIES, num_logits)
    assert boxes.shape == (1, QUERIES, 4)
    assert ((boxes >= 0) & (boxes <= 1)).all()
    scores = cls_logits.softmax(-1)[..., :-1] if name == "detr" else cls_logits.sigmoid()
    best = scores[0].max(-1).values.argmax()
    expected = bbox_cxcywh_to_xyxy(boxes[0, best]) * torch.tensor([96.0, 64.0, 96.0, 64.0])
    pred = samples[0].pred_instances
    torch.testing.assert_close(pred.scores[0], scores[0].max())
    torch.testing.assert_close(pred.bboxes[0], expected.clamp(min=0), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_matches_mmdet_detector_run_directly(name: str) -> None:
    """The same mmdet detector, built from mmdet's registry with a real backbone and the head's
    weights, run through forward_transformer + bbox_head on the levels it reads."""
    head = _head(name)
    cfg = _narrowed(DETECTORS[name], head.detector.embed_dims)  # a fresh copy
    cfg["bbox_head"]["num_classes"] = NUM_CLASSES
    cfg["backbone"] = dict(type="ResNet", depth=18, num_stages=4, out_indices=(3,))
    with DefaultScope.overwrite_default_scope("mmdet"):
        reference = MMDET_MODELS.build(cfg)
    missing, unexpected = reference.load_state_dict(head.detector.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("backbone.") for key in missing)

    samples, pad_shape = _mixed_batch()
    feats = _feats(len(samples), pad_shape, head.detector.embed_dims)
    levels = tuple(feats) if name in MULTI_LEVEL else (feats[-1],)
    torch.manual_seed(1)  # same dropout masks and denoising noise on both sides
    ours = head.loss(feats, samples)
    torch.manual_seed(1)
    head_inputs = reference.forward_transformer(levels, samples)
    theirs = reference.bbox_head.loss(**head_inputs, batch_data_samples=samples)
    assert len(ours) == len(theirs)
    theirs = {key: value.mean() for key, value in theirs.items()}  # some are 1-element
    for term in ("cls", "bbox", "iou"):
        torch.testing.assert_close(ours[f"loss_{term}"], theirs[f"loss_{term}"])
        torch.testing.assert_close(ours[f"loss_d0_{term}"], theirs[f"d0.loss_{term}"])
    torch.testing.assert_close(sum(ours.values()), sum(theirs.values()))

    head.eval()
    reference.eval()
    with torch.no_grad():
        head.predict(feats, samples)
        head_inputs = reference.forward_transformer(levels, samples)
        expected = reference.bbox_head.predict(
            **head_inputs, batch_data_samples=samples, rescale=False
        )
    for sample, want in zip(samples, expected, strict=True):
        torch.testing.assert_close(sample.pred_instances.bboxes, want.bboxes)
        torch.testing.assert_close(sample.pred_instances.scores, want.scores)
        assert torch.equal(sample.pred_instances.labels, want.labels)


@pytest.mark.parametrize("name", ["detr", "conditional_detr", "dab_detr"])
def test_overfits_one_box(name: str) -> None:
    """100 Adam steps on one image with one box: the loss falls and the top box finds the gt.

    Deformable DETR and DINO are left out for time (multi-scale attention over all 4 levels).
    """
    head = _head(name)
    gt = [12.0, 16.0, 60.0, 56.0]
    samples, pad_shape = _batch([(64, 96)], [[gt]], [[2]])
    feats = [f.detach() for f in _feats(1, pad_shape, head.detector.embed_dims)]
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-4)
    first = None
    for _ in range(100):
        loss = sum(head.loss(feats, samples).values())
        first = float(loss) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.3 * first
    head.eval()
    with torch.no_grad():
        head.predict(feats, samples)
    pred = samples[0].pred_instances
    assert pred.labels[0] == 2
    assert bbox_overlaps(pred.bboxes[:1], torch.tensor([gt]))[0, 0] > 0.5


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_configs_run_at_their_own_width(name: str) -> None:
    """The pasteable configs themselves (EMBED wide) build and run."""
    head = _head(name, EMBED).eval()
    with torch.no_grad():
        cls_logits, boxes = head(_feats(1, (32, 64), EMBED))
    assert boxes.shape == (1, QUERIES, 4) and torch.isfinite(cls_logits).all()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (dict(in_channels=128), "embed_dims"),
        (dict(num_classes=3), "num_classes"),
        (dict(detector=dict(DETR, neck=dict(type="ChannelMapper"))), "neck"),
    ],
)
def test_rejects_inconsistent_configs(change: dict, error: str) -> None:
    cfg = dict(detector=dict(DETR, bbox_head=dict(DETR["bbox_head"], num_classes=8)))
    cfg.update(num_classes=NUM_CLASSES, in_channels=EMBED)
    cfg.update(change)
    with pytest.raises(ValueError, match=error):
        DetectionHead(**cfg)


def test_two_stage_selection_needs_as_many_positions_as_queries() -> None:
    """DINO takes its queries from the top num_queries encoder positions: a 32×64 input has
    8×16 + 4×8 + 2×4 + 1×2 = 170 positions at strides 4-32, too few for 200 queries. The head
    says so, where mmdet's top-k fails with 'selected index k out of range'."""
    head = DetectionHead(
        detector=dict(DINO, num_queries=200), num_classes=NUM_CLASSES, in_channels=EMBED
    ).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="200 queries .* have 170"):
        head(_feats(1, (32, 64), EMBED))
    with torch.no_grad():
        _, boxes = head(_feats(1, (64, 64), EMBED))  # 256 + 64 + 16 + 4 = 340 positions
    assert boxes.shape == (1, 200, 4)
