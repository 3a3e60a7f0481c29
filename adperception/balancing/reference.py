"""The plain PCGrad the benchmarks compare against: T full backward passes over all parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from adperception.balancing import functional
from adperception.balancing.balancer import GradientBalancer
from adperception.balancing.task_gradients import HeadInputs
from adperception.registry import BALANCERS


@BALANCERS.register_module()
class PCGradReference(GradientBalancer):
    """PCGrad as its paper's code does it: one full ``backward`` per task into ``.grad``, every
    trainable parameter's gradients flattened into a T × P matrix (private ones included), one
    projection over all of it. Single process only (no rank averaging), no AMP, and blind to
    partial sharing; it exists to measure what the per-group implementation saves.
    """

    def __init__(self, tasks: Sequence[str], **kwargs) -> None:
        super().__init__(tasks, aggregator="pcgrad", **kwargs)

    def plan(self, model: nn.Module) -> str:
        return "weighted"  # DDP is not supported: nothing to bypass

    def train_step(
        self,
        model: nn.Module,
        losses: dict[str, Tensor],
        optim_wrapper,
        kind: str,
        head_inputs: HeadInputs | None = None,
    ) -> dict[str, Tensor]:
        """Full backwards from the losses: ``head_inputs`` are not used."""
        task_losses = [losses[f"loss_{t}"] for t in self.tasks]  # each its own graph root
        weights = self.weighting.weights(torch.stack(task_losses).detach()).detach()
        own = {id(p) for p in self.parameters()}
        params = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
        rows = []
        for i in range(len(self.tasks)):
            optim_wrapper.zero_grad()
            (weights[i] * task_losses[i]).backward(retain_graph=i < len(self.tasks) - 1)
            rows.append(
                torch.cat(
                    [
                        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                        for p in params
                    ]
                )
            )
        generator = torch.Generator().manual_seed(self.seed + int(self.num_steps))
        update = functional.pcgrad(torch.stack(rows), generator=generator)
        self.peak_task_gradient_bytes = max(
            self.peak_task_gradient_bytes, sum(r.numel() * r.element_size() for r in rows)
        )
        for param, piece in zip(params, update.split([p.numel() for p in params]), strict=True):
            param.grad = piece.view_as(param).clone()
        optim_wrapper.apply_gradients()
        self.num_steps += 1
        return {f"weight_{t}": w for t, w in zip(self.tasks, weights, strict=True)}
