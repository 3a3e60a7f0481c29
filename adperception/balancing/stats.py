"""What a balancer measured at one step: the record the diagnostics hook and the escalation read."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class GroupGradients:
    """One sharing group: the tasks that share its parameters and their gradients' Gram matrix.

    ``gram[i, j]`` is the inner product of task i's and task j's weighted gradients (the loss
    weights of ``GradientStats.loss_weights`` applied, rank-averaged under DDP) over the group's
    parameters, float64 on the CPU. ``update_sign`` is the sign (int8: -1, 0, 1) of the update the
    group's parameters received this step (before the optimizer), flat over those parameters.
    """

    tasks: tuple[str, ...]
    numel: int
    gram: Tensor
    update_sign: Tensor
    aggregator_weights: Tensor | None = None


@dataclass
class GradientStats:
    """Everything measured at iteration ``iter`` (0-based, the step that was just taken)."""

    iter: int
    loss_weights: dict[str, float]
    groups: dict[str, GroupGradients] = field(default_factory=dict)
