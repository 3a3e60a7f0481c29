"""Which tasks share which parameters: the sharing groups that gradient surgery runs in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn


def group_name(tasks: Iterable[str]) -> str:
    """``'det+seg'``: the tasks of a group, in the model's task order, joined by '+'."""
    return "+".join(tasks)


@dataclass(frozen=True)
class SharingGroup:
    """Parameters whose loss dependence is exactly the task set ``tasks`` (two or more tasks)."""

    tasks: tuple[str, ...]
    params: tuple[nn.Parameter, ...]

    @property
    def name(self) -> str:
        return group_name(self.tasks)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


@dataclass(frozen=True)
class SharingLayout:
    """The model's trainable parameters sorted by the tasks that use them.

    ``groups``: one per distinct task set of size ≥ 2, largest first; ``private[task]``: the
    parameters only that task uses, which get their gradient from the weighted loss without
    surgery. Parameters no task uses (and the balancer's own) are in neither.
    """

    tasks: tuple[str, ...]
    groups: tuple[SharingGroup, ...]
    private: Mapping[str, tuple[nn.Parameter, ...]]

    @classmethod
    def from_model(
        cls,
        tasks: Sequence[str],
        named_parameters: Iterable[tuple[str, nn.Parameter]],
        parameter_tasks: Mapping[str, frozenset[str]],
    ) -> SharingLayout:
        order = {task: i for i, task in enumerate(tasks)}
        by_tasks: dict[tuple[str, ...], list[nn.Parameter]] = {}
        for name, param in named_parameters:
            if not param.requires_grad:
                continue
            users = tuple(sorted(parameter_tasks.get(name, frozenset()), key=order.__getitem__))
            if users:
                by_tasks.setdefault(users, []).append(param)
        groups = [SharingGroup(u, tuple(ps)) for u, ps in by_tasks.items() if len(u) > 1]
        groups.sort(key=lambda g: (-g.numel, g.name))
        private = {t: tuple(by_tasks.get((t,), ())) for t in tasks}
        return cls(tuple(tasks), tuple(groups), private)

    def task_params(self, task: str) -> list[nn.Parameter]:
        """Every parameter ``task``'s loss depends on, shared or private."""
        shared = [p for g in self.groups if task in g.tasks for p in g.params]
        return shared + list(self.private[task])

    def largest_group_of(self, task: str) -> SharingGroup | None:
        return next((g for g in self.groups if task in g.tasks), None)
