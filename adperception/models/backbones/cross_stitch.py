"""Soft sharing: a ``BranchedBackbone`` whose branches exchange features through cross-stitch or
sluice units after every branched stage (``layers.cross_stitch``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from adperception.models.backbones.branched import BranchedBackbone
from adperception.models.layers.cross_stitch import CrossStitch
from adperception.registry import MODELS


@MODELS.register_module()
class CrossStitchBackbone(BranchedBackbone):
    """``BranchedBackbone`` with a ``CrossStitch`` unit after each branched stage: the input of
    every group's next stage, and every map its neck sees, is a learned mix of all groups' maps.

    Args:
        subspaces: 1 for cross-stitch units (Misra et al. 2016), S > 1 for sluice mixing of S
            channel subspaces per branch (Ruder et al. 2019).
        init_self: a branch's initial weight on itself (0.9 as Misra et al.).
        **kwargs: ``BranchedBackbone``'s; needs shared_stages < 4 and two or more groups.

    Every branch reaches every task through the units, so the balancer traces the branches as
    shared by all the tasks the units mix.
    """

    def __init__(self, *, subspaces: int = 1, init_self: float = 0.9, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.shared_stages == len(self.strides):
            raise ValueError("CrossStitchBackbone needs branched stages (shared_stages < 4)")
        self.stitches = nn.ModuleList(
            CrossStitch(
                len(self.groups),
                self.out_channels[index],
                subspaces=subspaces,
                init_self=init_self,
                channel_dim=-1 if self.channels_last else 1,
            )
            for index in range(self.shared_stages, len(self.strides))
        )

    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        trunk = self.trunk_outputs(x)
        inputs = [trunk[g][0] for g in self.groups]
        feats = {g: list(trunk[g][1]) for g in self.groups}
        for k, stitch in enumerate(self.stitches):
            inputs = stitch(
                [self.branches[g][k](y) for g, y in zip(self.groups, inputs, strict=True)]
            )
            for group, y in zip(self.groups, inputs, strict=True):
                feats[group].append(self._to_nchw(y))
        return feats

    def _declared_tasks(
        self, name: str, group_tasks: Mapping[str, frozenset[str]]
    ) -> frozenset[str]:
        return frozenset(self.task_groups)
