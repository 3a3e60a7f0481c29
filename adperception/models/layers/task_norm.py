"""Task-specific normalisation (Maninis et al. 2019, "attentive single-tasking"): the shared
layers keep one set of weights, and every norm layer among them has one copy per task group,
so that each group re-centres and re-scales the shared features its own way. The shared
layers then run once per group, each time with that group's norms."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

NORM_TYPES = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)
"""What counts as a norm layer: BatchNorm (EfficientNet's ``BatchNormAct2d`` included, with its
activation), LayerNorm (Swin's, ConvNeXt's ``LayerNorm2d``) and GroupNorm."""


class TaskSpecificNorm(nn.Module):
    """One copy of ``norm`` per group, all starting from its weights; ``active`` picks which
    one a forward pass uses."""

    def __init__(self, norm: nn.Module, groups: Sequence[str]) -> None:
        super().__init__()
        self.norms = nn.ModuleDict({group: copy.deepcopy(norm) for group in groups})
        self.active = groups[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.norms[self.active](x)


def add_task_norms(module: nn.Module, groups: Sequence[str]) -> list[TaskSpecificNorm]:
    """Replace, in place, every norm layer under ``module`` by a ``TaskSpecificNorm`` over
    ``groups``; raises ValueError when there is none (nothing would be task-specific)."""
    names = [name for name, sub in module.named_modules() if name and isinstance(sub, NORM_TYPES)]
    if not names:
        raise ValueError("no norm layer to make task-specific in the shared stages")
    replaced = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        task_norm = TaskSpecificNorm(getattr(parent, child), groups)
        setattr(parent, child, task_norm)
        replaced.append(task_norm)
    return replaced


def select_group(norms: Sequence[TaskSpecificNorm], group: str) -> None:
    """Make every one of ``norms`` use ``group``'s copy."""
    for norm in norms:
        norm.active = group
