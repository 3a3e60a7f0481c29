"""Metric depth head: Semantic-FPN trunk regressing log-depth, with L1 or SILog loss."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from mmengine.model import BaseModule
from mmengine.structures import PixelData
from torch import Tensor, nn

from adperception.data.structures import MTLDataSample
from adperception.models.heads.dense import (
    FPNDecoderTrunk,
    crop_to_samples,
    gather_targets,
    upsample,
    zero_loss,
)
from adperception.registry import MODELS

#: Eigen et al.'s variance weight as used by BTS, AdaBins and NeWCRFs (Eigen's paper: 0.5).
SILOG_LAMBDA = 0.85
#: Scale of the SILog loss in those implementations (the loss reads like a percentage).
SILOG_SCALE = 10.0
#: Floor under the SILog variance term, so that its square root has a finite gradient at 0.
SILOG_EPS = 1e-12


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """mean |d̂ − d| over the given (valid) pixels, in metres."""
    return (pred - target).abs().mean()


def silog_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Scale-invariant log loss over the given (valid) pixels of the whole batch:
    g = log d̂ − log d,  10 · sqrt(max(mean(g²) − 0.85 · mean(g)², 1e-12))."""
    g = torch.log(pred) - torch.log(target)
    variance = (g**2).mean() - SILOG_LAMBDA * g.mean() ** 2
    return SILOG_SCALE * torch.sqrt(variance.clamp_min(SILOG_EPS))


DEPTH_LOSSES = {"l1": l1_loss, "silog": silog_loss}


class DepthHeadBase(BaseModule):
    """What every depth head shares: the loss against ``gt_depth`` and the prediction in the
    original image's metres. A subclass's ``forward(feats)`` returns depth B×1×h×w in metres of
    the image the network sees (> 0, at any stride of the padded batch).

    Args:
        loss_type: 'l1' or 'silog' (key ``loss_depth``), over pixels with gt > 0 after bilinear
            upsampling of the depth to (Hp, Wp).
        min_depth, max_depth: the clamp of ``pred_depth`` (the loss sees the unclamped output,
            so a far-off pixel still gets a gradient).
    """

    task = "depth"

    def __init__(
        self,
        *,
        loss_type: str = "l1",
        min_depth: float = 0.0,
        max_depth: float = math.inf,
        init_cfg: dict | None = None,
    ) -> None:
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        super().__init__(init_cfg=init_cfg)
        if loss_type not in DEPTH_LOSSES:
            raise ValueError(f"loss_type must be one of {sorted(DEPTH_LOSSES)}, got {loss_type!r}")
        self.loss_type = loss_type
        self.min_depth = min_depth
        self.max_depth = max_depth

    def loss(
        self, feats: Sequence[Tensor], data_samples: Sequence[MTLDataSample]
    ) -> dict[str, Tensor]:
        return self.loss_by_feat(self(feats), data_samples)

    def loss_by_feat(
        self, depth: Tensor, data_samples: Sequence[MTLDataSample]
    ) -> dict[str, Tensor]:
        """{'loss_depth'} of B×1×h×w ``depth`` against ``gt_depth``; 0 when no pixel is valid."""
        for sample in data_samples:
            if "gt_depth" in sample and sample.gt_depth.shape != tuple(sample.img_shape[:2]):
                raise ValueError(
                    f"{sample.metainfo.get('img_path', 'a sample')}: gt_depth is "
                    f"{sample.gt_depth.shape}, the image {tuple(sample.img_shape[:2])}: the test "
                    "Resize keeps the original target for evaluation; train with RandomResize"
                )
        target = gather_targets(
            data_samples,
            "gt_depth",
            channels=1,
            pad_value=0.0,
            dtype=torch.float32,
            device=depth.device,
        )
        pred = upsample(depth.float(), target.shape[-2:])
        valid = target > 0
        if not bool(valid.any()):
            return {"loss_depth": zero_loss(depth)}
        return {"loss_depth": DEPTH_LOSSES[self.loss_type](pred[valid], target[valid])}

    def predict(self, feats: Sequence[Tensor], data_samples: Sequence[MTLDataSample]) -> None:
        self.predict_by_feat(self(feats), data_samples)

    def predict_by_feat(self, depth: Tensor, data_samples: Sequence[MTLDataSample]) -> None:
        """Set ``pred_depth`` on each sample: 1×H×W float32 metres at ``ori_shape``, the crop
        at ``img_shape`` resized bilinearly (as ``inference`` does) and multiplied by the zoom
        of ``scale_factor`` (the geometric mean of its axes, as the transforms divide)."""
        for sample, crop in crop_to_samples(depth.float(), data_samples):
            shape = tuple(sample.metainfo.get("ori_shape", crop.shape[-2:])[:2])
            if crop.shape[-2:] != shape:
                crop = upsample(crop[None], shape)[0]
            w_scale, h_scale = sample.metainfo.get("scale_factor", (1.0, 1.0))
            metres = crop * math.sqrt(w_scale * h_scale)
            sample.pred_depth = PixelData(data=metres.clamp(self.min_depth, self.max_depth))


@MODELS.register_module()
class DepthHead(DepthHeadBase):
    """Semantic-FPN regression head for metric depth.

    ``forward(feats)`` returns depth B×1×(Hp/4)×(Wp/4) in metres, always > 0: the last 1×1
    conv predicts log-depth and the head returns its exp. Log-depth makes the conv's output
    scale-free (a fixed error is a fixed relative error, as abs_rel and delta1 measure, over
    depths spanning two orders of magnitude in driving scenes) and SILog works in log space
    anyway; softplus would instead give near-zero gradients to small depths. ``init_depth`` (m)
    is the output at initialisation (the log-depth bias starts at its log): a start near the
    data's typical depth saves the many steps Adam needs to move the bias by ~3 (1 m → 20 m) at
    small learning rates.

    The output is in the metres of the image the network sees: training divides the target by
    each sample's zoom. ``predict`` undoes that, so ``pred_depth`` is the original image's
    depth, clamped to [``min_depth``, ``max_depth``] (the evaluation caps of the depth
    literature).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        channels: int,
        loss_type: str = "l1",
        init_depth: float = 10.0,
        min_depth: float = 0.0,
        max_depth: float = math.inf,
        norm_cfg: dict | None = None,
    ) -> None:
        if init_depth <= 0:
            raise ValueError(f"init_depth must be positive, got {init_depth}")
        init = dict(type="Normal", std=0.01, bias=math.log(init_depth))
        super().__init__(
            loss_type=loss_type,
            min_depth=min_depth,
            max_depth=max_depth,
            init_cfg=dict(init, override=dict(init, name="conv_depth")),
        )
        self.trunk = FPNDecoderTrunk(in_channels=in_channels, channels=channels, norm_cfg=norm_cfg)
        self.conv_depth = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return torch.exp(self.conv_depth(self.trunk(feats)))
