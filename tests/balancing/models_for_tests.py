"""A three-task regressor with partial sharing, small enough to check every gradient by hand.

``trunk`` is shared by a, b and c; ``branch_ab`` by a and b; ``branch_c`` and the heads belong to
one task each: two sharing groups, {a, b, c} and {a, b}, as in the perception model's
shared stem and per-group branches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adperception.models.base import MultiTaskBaseModel

TASKS = ("a", "b", "c")


class BranchedRegressor(MultiTaskBaseModel):
    """With ``record_head_inputs`` its ``loss`` records what each head read
    (``MultiTaskBaseModel.head_inputs``), and ``head_passes`` counts, per task, the backwards
    through its head."""

    def __init__(
        self, balancer: dict | None = None, width: int = 8, record_head_inputs: bool = False
    ) -> None:
        super().__init__()
        self.tasks = TASKS
        self.record_head_inputs = record_head_inputs
        self.head_passes = dict.fromkeys(TASKS, 0)
        self.trunk = nn.Linear(6, width)
        self.branch_ab = nn.Linear(width, width + 2)
        self.branch_c = nn.Linear(width, width + 2)
        self.heads = nn.ModuleDict({t: nn.Linear(width + 2, 1) for t in TASKS})
        self.init_balancer(balancer)

    def forward(self, inputs: Tensor, data_samples: Tensor | None = None, mode: str = "tensor"):
        if mode == "loss":
            return self.loss(inputs, data_samples)
        return self.outputs(inputs)

    def features(self, inputs: Tensor) -> dict[str, Tensor]:
        """What each head reads."""
        shared = torch.tanh(self.trunk(inputs))
        ab = torch.tanh(self.branch_ab(shared))
        c = torch.tanh(self.branch_c(shared))
        return {"a": ab, "b": ab, "c": c}

    def outputs(self, inputs: Tensor) -> dict[str, Tensor]:
        return {t: self.heads[t](x) for t, x in self.features(inputs).items()}

    def _count_head_pass(self, task: str, grad: Tensor) -> None:
        self.head_passes[task] += 1

    def loss(self, inputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        features = self.features(inputs)
        if self.record_head_inputs and self.records_head_inputs:
            self.head_inputs = {t: (x,) for t, x in features.items()}
        outputs = {t: self.heads[t](x) for t, x in features.items()}
        if torch.is_grad_enabled():
            for task, output in outputs.items():
                output.register_hook(lambda grad, task=task: self._count_head_pass(task, grad))
        return {
            f"loss_{t}": ((outputs[t].squeeze(-1) - targets[:, i]) ** 2).mean()
            for i, t in enumerate(self.tasks)
        }

    def probe_batch(self) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(4, 6, generator=generator), torch.randn(4, 3, generator=generator)


@torch.no_grad()
def tie_tasks(model: BranchedRegressor) -> None:
    """Give b and c exactly a's branch and head: with equal targets, three copies of one task."""
    model.branch_c.load_state_dict(model.branch_ab.state_dict())
    for task in ("b", "c"):
        model.heads[task].load_state_dict(model.heads["a"].state_dict())


def batch(seed: int, size: int = 8, conflict: bool = True) -> dict[str, Tensor]:
    """Inputs and targets; with ``conflict``, task b's target is minus task a's and c's is
    another function, otherwise all three targets are equal."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(size, 6, generator=generator)
    base = inputs[:, :3].sum(dim=1, keepdim=True) + 0.1 * torch.randn(size, 1, generator=generator)
    if conflict:
        targets = torch.cat([base, -base, torch.sin(inputs[:, 3:4])], dim=1)
    else:
        targets = base.repeat(1, 3)
    return dict(inputs=inputs, data_samples=targets)


class RegularisedRegressor(BranchedRegressor):
    """``BranchedRegressor`` whose loss also returns a regulariser of no task: ``reg_activity``,
    ``strength`` times the mean square of the trunk's output (it reaches the trunk only)."""

    def __init__(self, balancer: dict | None = None, strength: float = 0.3) -> None:
        super().__init__(balancer)
        self.strength = strength

    def loss(self, inputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        losses = super().loss(inputs, targets)
        activity = torch.tanh(self.trunk(inputs)).square().mean()
        return {**losses, "reg_activity": self.strength * activity}
