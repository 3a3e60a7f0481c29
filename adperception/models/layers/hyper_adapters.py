"""Hypernetwork adapters (as in HyperFormer, Mahabadi et al. 2021): one small network, shared by
every task group and every layer, generates each bottleneck adapter's weights from a learned
task-group embedding and a learned layer embedding. Adding a task group adds one embedding, not
an adapter bank.

An adapter computes ``x + up(gelu(down(x)))`` over the channels as ``BottleneckAdapter`` does,
with ``down`` (h×d, h = d // reduction) and ``up`` (d×h) generated; ``up``'s generator starts at
zero, so that, like the other adapters, a network with them computes the function of the
network without them until they are trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AdapterHypernetwork(nn.Module):
    """(group, layer) → that layer's adapter weights in that group's branch.

    Args:
        groups: the task groups, each with an embedding.
        layer_widths: channels d of every adapted layer, in layer order (the same in every group).
        reduction: adapter hidden width ``max(1, d // reduction)``.
        embed_dim: size of the group and layer embeddings.
        hidden: width of the shared projection, and the generators' input.
    """

    def __init__(
        self,
        groups: Sequence[str],
        layer_widths: Sequence[int],
        *,
        reduction: int = 4,
        embed_dim: int = 32,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        self.groups = tuple(groups)
        self.layer_widths = tuple(layer_widths)
        self.reduction = reduction
        self.group_embeddings = nn.ParameterDict(
            {g: nn.Parameter(torch.randn(embed_dim)) for g in self.groups}
        )
        self.layer_embeddings = nn.Parameter(torch.randn(len(self.layer_widths), embed_dim))
        self.projection = nn.Sequential(
            nn.Linear(2 * embed_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.down = nn.ModuleDict()
        self.up = nn.ModuleDict()
        for width in sorted(set(self.layer_widths)):
            bottleneck = self.bottleneck(width)
            self.down[str(width)] = nn.Linear(hidden, bottleneck * width + bottleneck)
            up = nn.Linear(hidden, width * bottleneck + width)
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
            self.up[str(width)] = up

    def bottleneck(self, width: int) -> int:
        return max(1, width // self.reduction)

    def forward(self, group: str, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(down_weight h×d, down_bias h, up_weight d×h, up_bias d)``; the down weight scaled
        by 1/√d, the fan-in scale of a linear layer's initialisation."""
        width = self.layer_widths[layer]
        h = self.bottleneck(width)
        z = self.projection(torch.cat([self.group_embeddings[group], self.layer_embeddings[layer]]))
        down = self.down[str(width)](z)
        up = self.up[str(width)](z)
        down_weight = down[: h * width].view(h, width) / math.sqrt(width)
        return down_weight, down[h * width :], up[: width * h].view(width, h), up[width * h :]


class HyperAdaptedBlock(nn.Module):
    """A backbone block followed by a generated adapter: ``adapter(block(x))``.

    The hypernetwork belongs to the backbone; the block only refers to it (not a submodule),
    so that its parameters appear once, under the backbone.
    """

    def __init__(
        self,
        block: nn.Module,
        hypernetwork: AdapterHypernetwork,
        *,
        group: str,
        layer: int,
        channel_dim: int,
    ) -> None:
        super().__init__()
        self.block = block
        object.__setattr__(self, "hypernetwork", hypernetwork)
        self.group = group
        self.layer = layer
        self.channel_dim = channel_dim

    def forward(self, x: Tensor) -> Tensor:
        x = self.block(x)
        down_weight, down_bias, up_weight, up_bias = self.hypernetwork(self.group, self.layer)
        h = x.movedim(self.channel_dim, -1)
        h = F.linear(F.gelu(F.linear(h, down_weight, down_bias)), up_weight, up_bias)
        return x + h.movedim(-1, self.channel_dim)
