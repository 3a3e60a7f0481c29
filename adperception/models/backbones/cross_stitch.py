"""Soft sharing: a ``BranchedBackbone`` whose branches exchange features through cross-stitch or
sluice units after every branched stage (``layers.cross_stitch``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
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
        orthogonality_weight: λ of sluice networks' penalty that pushes a branch's subspaces
            apart, so that one can be traded with the other branches and another kept private
            (Ruder et al.'s ``Σ ‖G_1ᵀ G_2‖²_F`` from Bousmalis et al. 2016, normalised to
            [0, 1] per pair of subspaces): the regulariser ``sluice_orthogonality``
            (``orthogonality_penalty``); 0 leaves it out.
        **kwargs: ``BranchedBackbone``'s; needs shared_stages < 4 and two or more groups.

    Every branch reaches every task through the units, so the balancer traces the branches as
    shared by all the tasks the units mix.
    """

    def __init__(
        self,
        *,
        subspaces: int = 1,
        init_self: float = 0.9,
        orthogonality_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.shared_stages == len(self.strides):
            raise ValueError("CrossStitchBackbone needs branched stages (shared_stages < 4)")
        if orthogonality_weight < 0 or (orthogonality_weight > 0 and subspaces < 2):
            raise ValueError(
                "orthogonality_weight must be >= 0, and > 0 only with subspaces >= 2 (it "
                f"separates a branch's subspaces); got {orthogonality_weight} with "
                f"{subspaces} subspace(s)"
            )
        self.subspaces = subspaces
        self.orthogonality_weight = orthogonality_weight
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
        return self._mixed(x, penalise=False)[0]

    def forward_with_regularisers(
        self, x: Tensor
    ) -> tuple[dict[str, list[Tensor]], dict[str, Tensor]]:
        return self._mixed(x, penalise=self.orthogonality_weight > 0)

    def _mixed(
        self, x: Tensor, *, penalise: bool
    ) -> tuple[dict[str, list[Tensor]], dict[str, Tensor]]:
        trunk = self.trunk_outputs(x)
        inputs = [trunk[g][0] for g in self.groups]
        feats = {g: list(trunk[g][1]) for g in self.groups}
        penalties = []
        for k, stitch in enumerate(self.stitches):
            outputs = [self.branches[g][k](y) for g, y in zip(self.groups, inputs, strict=True)]
            if penalise:
                penalties += [self.orthogonality_penalty(y) for y in outputs]
            inputs = stitch(outputs)
            for group, y in zip(self.groups, inputs, strict=True):
                feats[group].append(self._to_nchw(y))
        if not penalties:
            return feats, {}
        return feats, {"sluice_orthogonality": self.orthogonality_weight * sum(penalties)}

    def orthogonality_penalty(self, y: Tensor) -> Tensor:
        """``Σ_(s<t) ‖G_sᵀ G_t‖²_F / (‖G_sᵀ G_s‖_F ‖G_tᵀ G_t‖_F)`` over the channel subspaces
        ``G_s`` (every pixel of the batch a row) of one branch's stage output ``y``, before the
        stitch mixes it.

        Ruder et al.'s ``‖G_1ᵀ G_2‖²_F``, made blind to scale: the raw term is ~10⁶ on the
        quickstart's EfficientNet maps at the start, and it falls as the activations shrink,
        which the next stage's norm undoes, without separating anything. Each normalised
        term is the cosine of the subspaces' pixel Gram matrices (Cauchy-Schwarz): 0 for
        orthogonal subspaces, 1 for proportional ones, whatever the scale.
        """
        channels = y.movedim(-1 if self.channels_last else 1, -1).flatten(0, -2).float()
        parts = channels.chunk(self.subspaces, dim=-1)
        own = [torch.linalg.matrix_norm(g.T @ g) for g in parts]
        eps = torch.finfo(channels.dtype).tiny
        return sum(
            (parts[s].T @ parts[t]).square().sum() / (own[s] * own[t]).clamp_min(eps)
            for s in range(self.subspaces)
            for t in range(s + 1, self.subspaces)
        )

    def _declared_tasks(
        self, name: str, group_tasks: Mapping[str, frozenset[str]]
    ) -> frozenset[str]:
        return frozenset(self.task_groups)
