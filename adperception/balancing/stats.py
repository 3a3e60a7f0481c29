"""What a balancer measured at one step: the record the diagnostics hook and the escalation read,
and what a sharing group's Gram matrix alone says (norms, cosines, conflict)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
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


def update_sign(update: Tensor, chunk: int = 1 << 20) -> Tensor:
    """``GroupGradients.update_sign`` of a flat update: int8 on the CPU, taken ``chunk``
    coordinates at a time, so that no float tensor the update's size is made for it."""
    flat = update.reshape(-1)
    signs = torch.empty(flat.numel(), dtype=torch.int8)
    for start in range(0, flat.numel(), chunk):
        signs[start : start + chunk] = flat[start : start + chunk].sign().to(torch.int8).cpu()
    return signs


def task_norms(gram: Tensor) -> Tensor:
    """Each task gradient's L2 norm, ``sqrt(gram[i, i])`` (float64, shape T)."""
    return gram.diagonal().to(torch.float64).clamp(min=0).sqrt()


def cosine_matrix(gram: Tensor) -> Tensor:
    """The T × T cosine similarities of the task gradients (float64); rows and columns of a task
    whose gradient is zero are 0, since such a task neither agrees nor conflicts with any."""
    gram = gram.to(torch.float64)
    norms = task_norms(gram)
    denom = torch.outer(norms, norms)
    cos = torch.where(denom > 0, gram / denom, 0.0)
    return cos.clamp(-1.0, 1.0)


def conflict_rate(gram: Tensor) -> float:
    """The fraction of unordered task pairs whose gradients point apart (negative cosine)."""
    cos = cosine_matrix(gram)
    rows, cols = torch.triu_indices(*cos.shape, offset=1)
    if rows.numel() == 0:
        return 0.0
    return (cos[rows, cols] < 0).double().mean().item()
