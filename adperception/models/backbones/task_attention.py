"""MTAN (Liu et al. 2019): the whole backbone shared, and each task group attends to the shared
maps of every stage through its own attention modules (``layers.task_attention``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from adperception.models.backbones.branched import STRIDES, BranchedBackbone
from adperception.models.layers.task_attention import TaskAttention
from adperception.registry import MODELS


@MODELS.register_module()
class TaskAttentionBackbone(BranchedBackbone):
    """All 4 stages shared; group g's maps are ``TaskAttention`` of the shared maps.

    Args:
        shared_stages: 4, the only value (every stage shared).
        adapter: None, the only value (no branched stage to adapt).
        **kwargs: ``BranchedBackbone``'s; ``branches`` names the groups that get attention.
    """

    def __init__(
        self, *, shared_stages: int = len(STRIDES), adapter: None = None, **kwargs: Any
    ) -> None:
        if shared_stages != len(STRIDES) or adapter is not None:
            raise ValueError(
                "TaskAttentionBackbone shares every stage: shared_stages must be "
                f"{len(STRIDES)} and adapter None, got {shared_stages} and {adapter}"
            )
        super().__init__(shared_stages=shared_stages, adapter=None, **kwargs)
        self.attention = nn.ModuleDict(
            {group: TaskAttention(self.out_channels) for group in self.groups}
        )

    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        trunk = self.trunk_outputs(x)
        return {group: self.attention[group](trunk[group][1]) for group in self.groups}

    def _declared_tasks(
        self, name: str, group_tasks: Mapping[str, frozenset[str]]
    ) -> frozenset[str]:
        parts = name.split(".")
        if parts[0] == "attention":
            return group_tasks[parts[1]]
        return super()._declared_tasks(name, group_tasks)
