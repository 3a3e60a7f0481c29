"""MTAN's task attention (Liu et al. 2019): each task selects from the shared features of every
stage with a soft mask that its own features of the stage before help compute.

For a task and stage s with shared map ``f_s``: ``a_s = m_s ⊙ f_s`` with
``m_s = σ(h_s([f_s, d_s(a_{s-1})]))`` (``m_0 = σ(h_0(f_0))``), where ``h_s`` is
1×1 conv-BN-ReLU → 1×1 conv-BN and ``d_s`` a stride-2 3×3 conv-BN-ReLU that brings the task's
previous attended map to stage s's size and width. MTAN applies the mask to the stage's last
block and computes it from the block before; here both are the stage output, so that any timm
stage works as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _conv_bn(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1) -> list:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class TaskAttention(nn.Module):
    """One task's attention modules over the shared maps of all stages (NCHW).

    Args:
        channels: channels of the shared map of each stage; each stage halves the resolution.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.masks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for s, width in enumerate(channels):
            inputs = width if s == 0 else 2 * width
            self.masks.append(
                nn.Sequential(
                    *_conv_bn(inputs, width), nn.ReLU(inplace=True), *_conv_bn(width, width)
                )
            )
            if s > 0:
                self.downs.append(
                    nn.Sequential(*_conv_bn(channels[s - 1], width, 3, 2), nn.ReLU(inplace=True))
                )

    def forward(self, shared: Sequence[Tensor]) -> list[Tensor]:
        attended: list[Tensor] = []
        for s, feature in enumerate(shared):
            inputs = feature if s == 0 else torch.cat([feature, self.downs[s - 1](attended[-1])], 1)
            attended.append(torch.sigmoid(self.masks[s](inputs)) * feature)
        return attended
