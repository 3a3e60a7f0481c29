"""The base of every multi-task model: per-task losses in, the balancer's training step out."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from mmengine.model import BaseModel
from torch import Tensor

from adperception.balancing import GradientBalancer, build_balancer


class MultiTaskBaseModel(BaseModel):
    """An mmengine ``BaseModel`` whose ``loss`` returns ``loss_<task>`` for each of ``tasks``.

    Subclasses build their modules, set ``self.tasks`` and call ``init_balancer``, and provide
    ``parameter_tasks()`` (parameter name → the tasks whose loss depends on it), which the
    balancer's sharing groups come from. ``train_step`` hands backward and optimizer step to
    the balancer; under ``MTLDistributedDataParallel`` it runs the wrapper's forward, without
    DDP's reducer on the steps that average per-task gradients themselves.
    """

    supports_ddp_train_step = True
    tasks: tuple[str, ...]
    balancer: GradientBalancer
    _parameter_tasks: dict[str, frozenset[str]] | None = None  # traced on first use

    def init_balancer(self, balancer: dict | None) -> None:
        """``balancer``: a ``model.balancer`` config; None → the default ``Escalation``."""
        self.balancer = build_balancer(balancer, self.tasks)

    def train_step(self, data, optim_wrapper, ddp=None) -> dict[str, Tensor]:
        model = self if ddp is None else ddp
        per_task = self.balancer.needs_task_gradients(self)
        sync = ddp.no_sync() if ddp is not None and per_task else nullcontext()
        with sync:
            with optim_wrapper.optim_context(model):
                data = self.data_preprocessor(data, True)
                losses = model._run_forward(data, mode="loss")
            _, log_vars = self.parse_losses(losses)
            log_vars.update(self.balancer.train_step(self, losses, optim_wrapper, per_task))
        return {k: v.detach() if isinstance(v, Tensor) else v for k, v in log_vars.items()}

    def parameter_tasks(self) -> dict[str, frozenset[str]]:
        """Every parameter's name → the tasks whose loss depends on it.

        Traced, not declared: one loss pass on the subclass's ``probe_batch()``, each task's
        loss differentiated with respect to every trainable parameter; a parameter belongs to a
        task when it is in that loss's autograd graph. Run in eval mode under a forked RNG, so
        tracing at any step leaves running statistics and random streams untouched.
        """
        if self._parameter_tasks is None:
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            was_training = self.training
            with torch.random.fork_rng(devices=devices):
                self.eval()
                try:
                    self._parameter_tasks = self._trace_parameter_tasks()
                finally:
                    self.train(was_training)
        return self._parameter_tasks

    def probe_batch(self) -> tuple[Tensor, list]:
        """``(inputs, data_samples)`` on which every task's loss depends on all its parameters."""
        raise NotImplementedError

    def _trace_parameter_tasks(self) -> dict[str, frozenset[str]]:
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        owners: dict[str, set[str]] = {n: set() for n, _ in self.named_parameters()}
        owners.update(self.frozen_parameter_tasks())
        losses = self.loss(*self.probe_batch())
        for task in self.tasks:
            grads = torch.autograd.grad(
                losses[f"loss_{task}"], [p for _, p in named], retain_graph=True, allow_unused=True
            )
            for (name, _), grad in zip(named, grads, strict=True):
                if grad is not None:
                    owners[name].add(task)
        return {name: frozenset(tasks) for name, tasks in owners.items()}

    def frozen_parameter_tasks(self) -> dict[str, set[str]]:
        """Task sets of frozen parameters, which tracing cannot see; none by default."""
        return {}
