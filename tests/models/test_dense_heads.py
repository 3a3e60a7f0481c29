"""Dense task heads (segmentation, depth, normals) on real packed and preprocessed batches.

Expected losses are recomputed here from the heads' own forward outputs with plain torch ops
(F.interpolate, F.cross_entropy, the L1/SILog/cosine formulas) in float64, against targets
padded by writing each sample into an ignore-filled canvas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmseg.models.decode_heads import FPNHead

from adperception.data.structures import MTLDataSample
from adperception.data.transforms import PackMTLInputs
from adperception.models.heads import depth, normals, segmentation  # noqa: F401 (registration)
from adperception.models.heads.dense import FEATURE_STRIDES, FPNDecoderTrunk
from adperception.registry import MODELS

CHANNELS = 8
#: Two samples of different sizes; with pad_size_divisor=32 the batch is 64×64.
SIZES = ((37, 45), (50, 64))
BATCH_SHAPE = (64, 64)

#: id → (config, task, output channels, prediction field, loss key).
HEADS = {
    "seg": (dict(type="SegmentationHead", dropout_ratio=0.0), "seg", 19, "pred_sem_seg", "loss_ce"),
    "depth-l1": (dict(type="DepthHead", loss_type="l1"), "depth", 1, "pred_depth", "loss_depth"),
    "depth-silog": (
        dict(type="DepthHead", loss_type="silog"),
        "depth",
        1,
        "pred_depth",
        "loss_depth",
    ),
    "normals": (dict(type="NormalsHead"), "normals", 3, "pred_normals", "loss_normals"),
}
GT_FIELDS = {"seg": ("gt_sem_seg", 255), "depth": ("gt_depth", 0.0), "normals": ("gt_normals", 0.0)}


def _raw_sample(rng: np.random.Generator, height: int, width: int, *, valid: bool) -> dict:
    """A decoded sample per the data contract, with some invalid pixels (or only those)."""
    seg = rng.integers(0, 19, size=(height, width)).astype(np.int64)
    depth_map = rng.uniform(0.5, 80.0, size=(height, width)).astype(np.float32)
    normals_map = rng.normal(size=(height, width, 3)).astype(np.float32)
    normals_map /= np.linalg.norm(normals_map, axis=-1, keepdims=True)
    invalid = rng.random((height, width)) < 0.2 if valid else np.ones((height, width), bool)
    seg[invalid] = 255
    depth_map[invalid] = 0.0
    normals_map[invalid] = 0.0
    return {
        "img": rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8),
        "gt_seg_map": seg,
        "gt_depth_map": depth_map,
        "gt_normals_map": normals_map,
    }


def make_batch(seed: int = 0, *, valid: bool = True) -> list[MTLDataSample]:
    """Packed samples of ``SIZES`` run through the contract's DetDataPreprocessor."""
    rng = np.random.default_rng(seed)
    packed = [PackMTLInputs()(_raw_sample(rng, h, w, valid=valid)) for h, w in SIZES]
    preprocessor = DetDataPreprocessor(
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=False,
        pad_size_divisor=32,
    )
    data = preprocessor(
        {
            "inputs": [p["inputs"] for p in packed],
            "data_samples": [p["data_samples"] for p in packed],
        }
    )
    assert tuple(data["inputs"].shape[-2:]) == BATCH_SHAPE
    return data["data_samples"]


def make_feats(seed: int = 0) -> list[torch.Tensor]:
    """FPN-shaped maps: B×C×(64/s)×(64/s) for the four strides."""
    gen = torch.Generator().manual_seed(seed)
    height, width = BATCH_SHAPE
    return [
        torch.randn(len(SIZES), CHANNELS, height // s, width // s, generator=gen)
        for s in FEATURE_STRIDES
    ]


def build_head(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS.build(dict(HEADS[name][0], in_channels=CHANNELS, channels=CHANNELS))


def padded_targets(samples: list[MTLDataSample], task: str) -> torch.Tensor:
    """B×C×Hp×Wp targets: each sample written into a canvas of its ignore value."""
    field, fill = GT_FIELDS[task]
    maps = [getattr(s, field).data for s in samples]
    canvas = torch.full((len(maps), maps[0].shape[0], *BATCH_SHAPE), fill, dtype=maps[0].dtype)
    for i, target in enumerate(maps):
        canvas[i, :, : target.shape[1], : target.shape[2]] = target
    return canvas


def assert_close_fp32(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """A float32 result against its float64 recomputation, to float32 accuracy."""
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-6)


def upsampled(outputs: torch.Tensor) -> torch.Tensor:
    return F.interpolate(outputs.double(), BATCH_SHAPE, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", HEADS)
def test_registered_head_forward_shape(name: str) -> None:
    _, task, out_channels, _, _ = HEADS[name]
    head = build_head(name)
    assert head.task == task
    out = head(make_feats())
    assert out.shape == (len(SIZES), out_channels, BATCH_SHAPE[0] // 4, BATCH_SHAPE[1] // 4)
    assert torch.isfinite(out).all()


def test_trunk_matches_mmseg_fpn_head() -> None:
    """Given FPNHead's weights, the trunk followed by FPNHead's classifier is FPNHead."""
    torch.manual_seed(0)
    reference = FPNHead(
        in_channels=[CHANNELS] * 4,
        in_index=[0, 1, 2, 3],
        feature_strides=list(FEATURE_STRIDES),
        channels=CHANNELS,
        num_classes=5,
        dropout_ratio=0.0,
        loss_decode=dict(type="mmseg.CrossEntropyLoss", avg_non_ignore=True),
    )
    trunk = FPNDecoderTrunk(in_channels=CHANNELS, channels=CHANNELS)
    trunk.scale_heads.load_state_dict(reference.scale_heads.state_dict())
    feats = make_feats()
    torch.testing.assert_close(reference.conv_seg(trunk(feats)), reference(feats))


def test_segmentation_loss_is_cross_entropy_over_valid_pixels() -> None:
    head, samples, feats = build_head("seg"), make_batch(), make_feats()
    logits = head(feats)
    losses = head.loss_by_feat(logits, samples)
    assert set(losses) == {"loss_ce"}
    labels = padded_targets(samples, "seg")[:, 0]
    expected = F.cross_entropy(upsampled(logits), labels, ignore_index=255)
    assert_close_fp32(losses["loss_ce"], expected)
    torch.testing.assert_close(head.loss(feats, samples)["loss_ce"], losses["loss_ce"])


@pytest.mark.parametrize("loss_type", ["l1", "silog"])
def test_depth_loss_matches_formula(loss_type: str) -> None:
    head, samples, feats = build_head(f"depth-{loss_type}"), make_batch(), make_feats()
    pred = head(feats)
    loss = head.loss_by_feat(pred, samples)["loss_depth"]
    target = padded_targets(samples, "depth").double()
    valid = target > 0
    pred_v, target_v = upsampled(pred)[valid], target[valid]
    if loss_type == "l1":
        expected = (pred_v - target_v).abs().sum() / valid.sum()
    else:
        g = pred_v.log() - target_v.log()
        n = valid.sum()
        expected = 10.0 * torch.sqrt((g * g).sum() / n - 0.85 * (g.sum() / n) ** 2)
    assert_close_fp32(loss, expected)


def test_normals_loss_is_one_minus_cosine_over_valid_pixels() -> None:
    head, samples, feats = build_head("normals"), make_batch(), make_feats()
    pred = head(feats)
    loss = head.loss_by_feat(pred, samples)["loss_normals"]
    target = padded_targets(samples, "normals").double()
    up = upsampled(pred)
    up = up / up.norm(dim=1, keepdim=True)
    valid = target.norm(dim=1) > 0
    cosine = (up * target).sum(dim=1) / target.norm(dim=1).clamp_min(1e-12)
    expected = (1.0 - cosine)[valid].mean()
    assert_close_fp32(loss, expected)


@pytest.mark.parametrize("name", HEADS)
def test_padding_never_contributes(name: str) -> None:
    """Outputs changed only where bilinear upsampling reaches padding leave the loss as is."""
    loss_key = HEADS[name][4]
    head, samples = build_head(name), make_batch()
    with torch.no_grad():
        out, other = head(make_feats(0)), head(make_feats(1))
    base = head.loss_by_feat(out, samples)[loss_key]
    # A stride-4 cell j feeds upsampled pixels x with (x + 0.5) / 4 - 0.5 in (j - 1, j + 1);
    # from j >= (w + 1.5) / 4 on, none of them lies inside the image (x <= w - 1).
    height, width = samples[0].metainfo["img_shape"]
    row0, col0 = math.ceil((height + 1.5) / 4), math.ceil((width + 1.5) / 4)
    assert row0 < out.shape[2] and col0 < out.shape[3]
    changed = out.clone()
    changed[0, :, row0:] = other[0, :, row0:]
    changed[0, :, :, col0:] = other[0, :, :, col0:]
    torch.testing.assert_close(head.loss_by_feat(changed, samples)[loss_key], base)
    inside = out.clone()
    inside[0, :, row0 - 2, col0 - 2] = other[0, :, row0 - 2, col0 - 2]
    assert not torch.allclose(head.loss_by_feat(inside, samples)[loss_key], base)


def test_depth_is_positive_and_normals_unit() -> None:
    feats = [3.0 * f for f in make_feats()]
    assert (build_head("depth-l1")(feats) > 0).all()
    norms = build_head("normals")(feats).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("name", HEADS)
def test_predict_crops_upsampled_output_to_img_shape(name: str) -> None:
    _, task, out_channels, field, _ = HEADS[name]
    head, samples, feats = build_head(name).eval(), make_batch(), make_feats()
    with torch.no_grad():
        head.predict(feats, samples)
        full = upsampled(head(feats))
    for i, sample in enumerate(samples):
        height, width = sample.metainfo["img_shape"]
        pred = getattr(sample, field).data
        expected = full[i, :, :height, :width]
        if task == "seg":
            assert pred.shape == (1, height, width) and pred.dtype == torch.int64
            torch.testing.assert_close(pred, expected.argmax(dim=0, keepdim=True))
            continue
        assert pred.shape == (out_channels, height, width) and pred.dtype == torch.float32
        if task == "normals":
            expected = expected / expected.norm(dim=0, keepdim=True)
            torch.testing.assert_close(pred.norm(dim=0), torch.ones(height, width))
        else:
            assert (pred > 0).all()
        assert_close_fp32(pred, expected)


@pytest.mark.parametrize("name", HEADS)
def test_all_invalid_batch_gives_zero_loss_with_finite_grads(name: str) -> None:
    head, samples = build_head(name), make_batch(valid=False)
    losses = head.loss(make_feats(), samples)
    assert all(key.startswith("loss") for key in losses)
    total = sum(losses.values())
    assert total.item() == 0.0
    total.backward()
    for param_name, param in head.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("name", HEADS)
def test_sample_without_the_task_counts_as_all_invalid(name: str) -> None:
    """A batch mixing datasets: a sample lacking the gt field is skipped, not an error."""
    task, loss_key = HEADS[name][1], HEADS[name][4]
    field, fill = GT_FIELDS[task]
    head, feats = build_head(name), make_feats()
    with torch.no_grad():
        out = head(feats)
    missing, invalid = make_batch(), make_batch()
    delattr(missing[1], field)
    assert field not in missing[1]
    target = getattr(invalid[1], field)
    target.data = torch.full_like(target.data, fill)
    torch.testing.assert_close(
        head.loss_by_feat(out, missing)[loss_key], head.loss_by_feat(out, invalid)[loss_key]
    )
    assert (
        head.loss_by_feat(out, missing)[loss_key] != head.loss_by_feat(out, make_batch())[loss_key]
    )


@pytest.mark.parametrize("name", HEADS)
def test_adam_steps_reduce_loss(name: str) -> None:
    loss_key = HEADS[name][4]
    head, samples, feats = build_head(name), make_batch(), make_feats()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    history = []
    for _ in range(8):
        loss = head.loss(feats, samples)[loss_key]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.95 * history[0], history


def test_unknown_depth_loss_rejected() -> None:
    with pytest.raises(ValueError, match="loss_type"):
        MODELS.build(dict(type="DepthHead", in_channels=4, channels=4, loss_type="l2"))
