"""The multi-decoder transformer's parts: the shared encoder feeding mmseg's Mask2Former decoder
is mmseg's own Mask2Former, DINO without an encoder decodes the memory it is given, and the
depth-bin and normal-mode heads are the mixtures their formulas say."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config, ConfigDict
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData
from mmseg.models.decode_heads import Mask2FormerHead
from mmseg.structures import SegDataSample
from torch import Tensor, nn

from adperception.data.structures import MTLDataSample
from adperception.engine import setup_runtime
from adperception.models.heads import (
    AdaptiveBinsDepthHead,
    MaskClassificationHead,
    MemoryDINO,
    QueryNormalsHead,
)
from adperception.models.necks import DeformableEncoderNeck
from adperception.registry import MODELS
from tests.models.test_architectures import ROOT

EMBED = 32
SIZE = (64, 96)  # (h, w) of the images: stride-4 maps of 16×24


class FixedQueries(nn.Module):
    """A query decoder's place taken by given outputs: the head's mixture alone is tested."""

    def __init__(self, queries: Tensor, masks: Tensor) -> None:
        super().__init__()
        self.outputs = (queries, masks)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        return self.outputs


class FixedDirections(nn.Module):
    """The normal-mode MLP's place taken by given directions, one per query."""

    def __init__(self, directions: Tensor) -> None:
        super().__init__()
        self.directions = directions

    def forward(self, queries: Tensor) -> Tensor:
        return self.directions.expand(queries.shape[0], *self.directions.shape)


def one_hot_masks(assignment: Tensor, num_queries: int, margin: float = 60.0) -> Tensor:
    """B×Q×h×w mask logits under which pixel (b, y, x) belongs to query assignment[b, y, x]."""
    return margin * F.one_hot(assignment, num_queries).permute(0, 3, 1, 2).float()


def test_adaptive_bins_partition_log_depth_and_each_pixel_takes_its_bin() -> None:
    torch.manual_seed(0)
    head = AdaptiveBinsDepthHead(in_channels=EMBED, num_bins=4, min_depth=0.5, max_depth=128.0)
    with torch.no_grad():  # equal widths: the bins split [log 0.5, log 128] into 4 equal parts
        head.bin_width[-1].weight.zero_()
        head.bin_width[-1].bias.zero_()
    queries = torch.randn(1, 4, EMBED)
    centres = head.bin_centres(queries)
    # the bins' geometric midpoints 0.5 · 256^((k + 1/2) / 4) = 1, 4, 16, 64 m
    expected = [0.5 * 256 ** ((k + 0.5) / 4) for k in range(4)]
    torch.testing.assert_close(centres.exp()[0], torch.tensor(expected))
    assignment = torch.tensor([[[0, 1, 2], [3, 3, 0]]])
    head.decoder = FixedQueries(queries, one_hot_masks(assignment, 4))
    depth = head([torch.zeros(1)])
    torch.testing.assert_close(
        depth[0, 0], torch.tensor(expected)[assignment[0]], rtol=1e-5, atol=0
    )
    # learned widths: still a partition (increasing centres inside the range), any mixture inside
    with torch.no_grad():
        head.bin_width[-1].weight.normal_()
    centres = head.bin_centres(torch.randn(3, 4, EMBED)).exp()
    assert (centres.diff(dim=1) > 0).all() and (centres > 0.5).all() and (centres < 128).all()
    head.decoder = FixedQueries(torch.randn(2, 4, EMBED), torch.randn(2, 4, 5, 5) * 10)
    depth = head([torch.zeros(1)])
    assert depth.shape == (2, 1, 5, 5) and (depth > 0.5).all() and (depth < 128).all()
    with pytest.raises(ValueError, match="max_depth < inf"):
        AdaptiveBinsDepthHead(in_channels=EMBED, max_depth=math.inf)


def test_normal_modes_give_each_pixel_its_mode_and_blend_between_two() -> None:
    torch.manual_seed(0)
    head = QueryNormalsHead(in_channels=EMBED, num_modes=3)
    axes = torch.eye(3)
    head.direction = FixedDirections(axes)  # the three modes: the camera axes
    queries = torch.zeros(1, 3, EMBED)
    assignment = torch.tensor([[[0, 1], [2, 0]]])
    head.decoder = FixedQueries(queries, one_hot_masks(assignment, 3))
    normals = head([torch.zeros(1)])
    torch.testing.assert_close(normals[0].permute(1, 2, 0), axes[assignment[0]])
    # equal logits for x and z at a pixel (y far below): the bisector (1, 0, 1) / √2
    head.decoder = FixedQueries(queries, torch.tensor([5.0, -50.0, 5.0]).view(1, 3, 1, 1))
    torch.testing.assert_close(
        head([torch.zeros(1)])[0, :, 0, 0], torch.tensor([1.0, 0.0, 1.0]) / math.sqrt(2)
    )


def _encoder_cfg(levels: int) -> dict:
    return dict(
        num_layers=1,
        layer_cfg=dict(
            self_attn_cfg=dict(
                embed_dims=EMBED, num_heads=4, num_levels=levels, num_points=4,
                dropout=0.0, batch_first=True,
            ),
            ffn_cfg=dict(embed_dims=EMBED, feedforward_channels=64, ffn_drop=0.0),
        ),
    )  # fmt: skip


def test_mask_classification_on_the_shared_encoder_is_mmsegs_mask2former() -> None:
    """Our neck + head against mmseg's Mask2Former head with mmdet's pixel decoder, the same
    weights: the same per-layer predictions, the same loss (same point-sampling seed)."""
    setup_runtime()
    cfg = Config.fromfile(ROOT / "configs/experiments/architectures/multi_decoder.py")
    decode_head = cfg.model.heads.seg.decode_head.to_dict()
    attention = dict(embed_dims=EMBED, num_heads=4, batch_first=True)
    layer = decode_head["transformer_decoder"]["layer_cfg"]
    layer.update(self_attn_cfg=attention, cross_attn_cfg=attention)
    layer["ffn_cfg"].update(embed_dims=EMBED, feedforward_channels=64)
    decode_head["positional_encoding"] = dict(num_feats=EMBED // 2, normalize=True)
    decode_head["train_cfg"]["num_points"] = 64
    decode_head.update(
        num_queries=6, loss_cls=dict(decode_head["loss_cls"], class_weight=[1.0] * 5 + [0.1])
    )
    torch.manual_seed(0)
    channels = [8, 16, 24, 32]
    neck = DeformableEncoderNeck(
        in_channels=channels, out_channels=EMBED, num_layers=1, num_heads=4,
        feedforward_channels=64, norm_cfg=dict(type="GN", num_groups=8),
    )  # fmt: skip
    neck.init_weights()
    ours = MaskClassificationHead(decode_head=decode_head, in_channels=EMBED, num_classes=5)
    ours.init_weights()
    with DefaultScope.overwrite_default_scope("mmseg"):
        reference = Mask2FormerHead(
            **ConfigDict(
                decode_head,
                in_channels=channels,
                strides=[4, 8, 16, 32],
                feat_channels=EMBED,
                out_channels=EMBED,
                num_classes=5,
                pixel_decoder=dict(
                    type="mmdet.MSDeformAttnPixelDecoder",
                    num_outs=3,
                    norm_cfg=dict(type="GN", num_groups=8),
                    encoder=_encoder_cfg(3),
                    positional_encoding=dict(num_feats=EMBED // 2, normalize=True),
                ),
            )
        )
    state = {f"pixel_decoder.{k}": v for k, v in neck.pixel_decoder.state_dict().items()}
    state.update(
        {k: v for k, v in ours.decode_head.state_dict().items() if not k.startswith("pixel_")}
    )
    reference.load_state_dict(state)
    feats = [
        torch.randn(2, c, SIZE[0] // s, SIZE[1] // s)
        for c, s in zip(channels, (4, 8, 16, 32), strict=True)
    ]
    encoded = neck(feats)
    assert [tuple(f.shape[-2:]) for f in encoded] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    for a, b in zip(ours._decode(encoded), reference(feats, []), strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y)

    labels = torch.randint(0, 5, (2, 1, *SIZE))
    labels[0, :, :8] = 255
    meta = dict(img_shape=SIZE, batch_input_shape=SIZE, pad_shape=SIZE)
    samples = [MTLDataSample(metainfo=meta, gt_sem_seg=PixelData(data=lab)) for lab in labels]
    torch.manual_seed(1)
    loss = ours.loss(encoded, samples)
    torch.manual_seed(1)
    seg_samples = [SegDataSample(metainfo=meta, gt_sem_seg=PixelData(data=lab)) for lab in labels]
    expected = reference.loss(feats, seg_samples, {})
    assert loss["loss_cls"].item() == pytest.approx(expected["loss_cls"].item(), rel=1e-5)
    assert loss["loss_d1_dice"].item() == pytest.approx(expected["d1.loss_dice"].item(), rel=1e-5)
    assert len(loss) == len(expected)
    scores = ours(encoded)
    assert scores.shape == (2, 5, 16, 24) and (scores >= 0).all()
    with pytest.raises(ValueError, match="must not set"):
        MaskClassificationHead(
            decode_head=dict(decode_head, pixel_decoder={}), in_channels=EMBED, num_classes=5
        )


def test_memory_dino_decodes_the_given_memory_with_its_level_embedding() -> None:
    setup_runtime()
    cfg = Config.fromfile(ROOT / "configs/experiments/architectures/multi_decoder.py")
    detector = cfg.model.heads.det.detector
    assert detector.type == "MemoryDINO" and detector.encoder is None
    dino = MODELS.build(cfg.model.heads.det).detector
    with pytest.raises(ValueError, match="encoder=None"):
        MODELS.build(dict(cfg.model.heads.det, detector=dict(detector, encoder=dict())))
    assert isinstance(dino, MemoryDINO)
    assert not any(n.startswith("encoder.") for n, _ in dino.named_parameters())
    assert torch.isfinite(dino.level_embed).all() and dino.level_embed.std() > 0.5
    shapes = torch.tensor([[4, 6], [2, 3], [1, 2]])
    feat = torch.randn(2, 24 + 6 + 2, 256)
    out = dino.forward_encoder(feat, None, feat, shapes, torch.tensor([0, 24, 30]), None)
    level = torch.cat([torch.zeros(24), torch.ones(6), torch.full((2,), 2)]).long()
    torch.testing.assert_close(out["memory"], feat + dino.level_embed[level])
