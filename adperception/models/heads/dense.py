"""What the dense heads (segmentation, depth, normals) share: the FPN decoder trunk, padding of
the unpadded per-sample targets to the batch, and upsampling/cropping of stride-4 outputs.

Outputs live at stride 4 of the padded batch (Hp/4 × Wp/4); losses compare them, upsampled
bilinearly to (Hp, Wp), with targets padded bottom/right to (Hp, Wp) with their ignore value;
predictions are the same upsampled maps cropped to each sample's ``img_shape``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from mmseg.models.utils import Upsample, resize
from torch import Tensor, nn

from adperception.data.structures import MTLDataSample

#: Strides of the four FPN maps every head receives (the backbone contract).
FEATURE_STRIDES = (4, 8, 16, 32)


class FPNDecoderTrunk(BaseModule):
    """Semantic-FPN decoder (mmseg ``FPNHead`` without its classifier): per level, 3×3
    ConvModules each followed by a 2× bilinear upsampling until stride 4, summed.

    ``forward(feats)`` takes the four maps (``in_channels`` each, strides 4..32) and returns
    B×``channels``×(H/4)×(W/4).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        channels: int,
        norm_cfg: dict | None = None,
        feature_strides: Sequence[int] = FEATURE_STRIDES,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.feature_strides = tuple(feature_strides)
        base = int(np.log2(self.feature_strides[0]))
        self.scale_heads = nn.ModuleList()
        for stride in self.feature_strides:
            layers: list[nn.Module] = []
            for k in range(max(1, int(np.log2(stride)) - base)):
                layers.append(
                    ConvModule(
                        in_channels if k == 0 else channels,
                        channels,
                        3,
                        padding=1,
                        norm_cfg=norm_cfg,
                    )
                )
                if stride != self.feature_strides[0]:
                    layers.append(Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        if len(feats) != len(self.scale_heads):
            raise ValueError(f"expected {len(self.scale_heads)} feature maps, got {len(feats)}")
        output = self.scale_heads[0](feats[0])
        for head, feat in zip(self.scale_heads[1:], feats[1:], strict=True):
            output = output + upsample(head(feat), output.shape[-2:])
        return output


def upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of an NCHW map to ``size`` (align_corners=False, as mmseg's heads)."""
    return resize(x, size=tuple(size), mode="bilinear", align_corners=False)


def batch_input_shape(data_samples: Sequence[MTLDataSample]) -> tuple[int, int]:
    """(Hp, Wp) of the padded batch, as set by the data preprocessor."""
    height, width = data_samples[0].metainfo["batch_input_shape"]
    return int(height), int(width)


def stack_padded(maps: Sequence[Tensor], size: Sequence[int], pad_value: float) -> Tensor:
    """Stack C×h×w maps into B×C×H×W, padding each bottom/right to ``size`` = (H, W)."""
    height, width = size
    padded = []
    for target in maps:
        pad_h, pad_w = height - target.shape[-2], width - target.shape[-1]
        if pad_h < 0 or pad_w < 0:
            raise ValueError(f"target {tuple(target.shape)} is larger than the batch {size}")
        padded.append(F.pad(target, (0, pad_w, 0, pad_h), value=pad_value))
    return torch.stack(padded)


def gather_targets(
    data_samples: Sequence[MTLDataSample],
    field: str,
    *,
    channels: int,
    pad_value: float,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """The ``field`` PixelData of every sample, padded to the batch: B×C×Hp×Wp on ``device``.

    A sample without ``field`` (its dataset lacks the task, e.g. real Cityscapes normals)
    contributes only ``pad_value``, so batches mixing datasets train on what each provides.
    """
    size = batch_input_shape(data_samples)
    maps = [
        getattr(sample, field).data.to(device=device, dtype=dtype)
        if field in sample
        else torch.full((channels, *size), pad_value, dtype=dtype, device=device)
        for sample in data_samples
    ]
    return stack_padded(maps, size, pad_value)


def crop_to_samples(
    outputs: Tensor, data_samples: Sequence[MTLDataSample]
) -> Iterator[tuple[MTLDataSample, Tensor]]:
    """Upsample B×C×h×w ``outputs`` to (Hp, Wp) and yield each sample with its detached C×h×w
    crop at its ``img_shape``: what ``predict`` stores."""
    full = upsample(outputs.detach(), batch_input_shape(data_samples))
    for sample, output in zip(data_samples, full, strict=True):
        height, width = sample.metainfo["img_shape"][:2]
        yield sample, output[:, :height, :width]


def zero_loss(outputs: Tensor) -> Tensor:
    """A zero that stays connected to ``outputs``: every parameter gets a finite zero gradient
    (DDP needs them all) when a batch has no valid pixel."""
    return outputs.sum() * 0.0
