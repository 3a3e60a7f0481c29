"""Soft sharing between task branches: learned linear mixing of their same-shaped features.

- Cross-stitch units (Misra et al. 2016): branch g's output becomes ``Σ_h α[g, h] x_h``, one
  learned scalar per ordered pair of branches, initialised to ``α[g, g] = init_self`` and the
  rest of each row spread evenly, so that a branch starts mostly itself.
- Sluice mixing (Ruder et al. 2019): the channels of every branch are split into ``subspaces``
  equal parts and ``α`` mixes all (branch, subspace) pairs, so that a branch can take one
  subspace from a neighbour and keep another to itself. With one subspace it is a cross-stitch
  unit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class CrossStitch(nn.Module):
    """Mixes G same-shaped feature maps, one per task branch.

    Args:
        num_branches: G ≥ 2.
        channels: channels of each map (divisible by ``subspaces``).
        subspaces: 1 for Misra's cross-stitch unit, S > 1 for sluice mixing of G·S subspaces.
        init_self: the initial weight of a (branch, subspace) on itself; the rest of its row,
            ``1 - init_self``, is spread evenly over the same subspace of the other branches, so
            that every row sums to 1 and the features keep their scale.
        channel_dim: 1 for NCHW maps, -1 for NHWC (Swin).

    ``alpha`` is (G·S)×(G·S); row ``g·S + s`` gives the output subspace s of branch g.
    """

    def __init__(
        self,
        num_branches: int,
        channels: int,
        *,
        subspaces: int = 1,
        init_self: float = 0.9,
        channel_dim: int = 1,
    ) -> None:
        super().__init__()
        if num_branches < 2:
            raise ValueError(f"cross-stitch mixing needs two or more branches, got {num_branches}")
        if subspaces < 1 or channels % subspaces:
            raise ValueError(f"{channels} channels do not split into {subspaces} subspaces")
        if not 0.0 <= init_self <= 1.0:
            raise ValueError(f"init_self must be in [0, 1], got {init_self}")
        self.num_branches = num_branches
        self.subspaces = subspaces
        self.channel_dim = channel_dim
        other = (1.0 - init_self) / (num_branches - 1)
        same_subspace = torch.eye(subspaces)
        branch_mix = torch.full((num_branches, num_branches), other)
        branch_mix.fill_diagonal_(init_self)
        self.alpha = nn.Parameter(torch.kron(branch_mix, same_subspace))

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != self.num_branches:
            raise ValueError(f"expected {self.num_branches} branch maps, got {len(features)}")
        # G maps → (G·S) subspaces stacked on a new leading axis, mixed by alpha, split back
        parts = [part for x in features for part in x.chunk(self.subspaces, dim=self.channel_dim)]
        stacked = torch.stack(parts)
        mixed = torch.einsum("pq,q...->p...", self.alpha, stacked)
        outputs = mixed.unbind(0)
        return [
            torch.cat(outputs[g * self.subspaces : (g + 1) * self.subspaces], dim=self.channel_dim)
            for g in range(self.num_branches)
        ]
