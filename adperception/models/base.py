"""The base of every multi-task model: per-task losses in, the balancer's training step out."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.distributed as dist
from mmengine.model import BaseModel
from torch import Tensor, nn

from adperception.balancing import GradientBalancer, build_balancer, regularisers_of
from adperception.balancing.distributed import world_size


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
    #: Per task, the tensors its head read in the ``loss`` forward of a training step, for a
    #: subclass whose heads see nothing else of the network (all between them and the loss is
    #: the task's own): the balancer's amortised steps then backpropagate through each head
    #: once (``amortised_gradients``). ``train_step`` hands them over and drops them.
    head_inputs: dict[str, tuple[Tensor, ...]] | None = None
    records_head_inputs = False  # True within ``recording_head_inputs``

    @contextmanager
    def recording_head_inputs(self) -> Iterator[None]:
        """``loss`` passes within it record ``head_inputs`` (where the subclass can); outside,
        none is kept, so no other caller of ``loss`` holds a forward graph alive."""
        self.records_head_inputs = True
        try:
            yield
        finally:
            self.records_head_inputs = False

    def init_balancer(self, balancer: dict | None) -> None:
        """``balancer``: a ``model.balancer`` config; None → the default ``Escalation``."""
        self.balancer = build_balancer(balancer, self.tasks)

    def train_step(self, data, optim_wrapper, ddp=None) -> dict[str, Tensor]:
        model = self if ddp is None else ddp
        labelled = agreed_tasks(self.labelled_tasks(data), self.tasks)
        kind = self.balancer.plan(self) if len(labelled) == len(self.tasks) else "partial"
        sync = ddp.no_sync() if ddp is not None and kind != "weighted" else nullcontext()
        with sync:
            with optim_wrapper.optim_context(model), self.recording_head_inputs():
                data = self.data_preprocessor(data, True)
                losses = model._run_forward(data, mode="loss")
            # a task labelled here but not on another rank is left out here too
            losses = {k: v for k, v in losses.items() if task_of_loss(k) in (*labelled, None)}
            head_inputs, self.head_inputs = self.head_inputs, None
            log_vars = self.balancer.train_step(self, losses, optim_wrapper, kind, head_inputs)
        log_vars.update(self.loss_log_vars(losses))
        return {k: v.detach() if isinstance(v, Tensor) else v for k, v in log_vars.items()}

    def labelled_tasks(self, data: dict) -> list[str]:
        """The tasks with a labelled sample in the batch ``data``; every task by default (a
        model that trains on partially labelled data says which from its samples)."""
        return list(self.tasks)

    def loss_log_vars(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """What the log shows of the losses, as mmengine's ``parse_losses``: every entry's mean,
        and ``loss``, the sum of the entries named ``loss*`` and of the regularisers
        (``reg_*``, which the balancer adds at weight 1). A non-finite entry is left out
        (the balancer names it and skips that step on every rank), and so is ``loss`` then, so
        that one bad step does not poison the logged averages."""
        entries = {name: value.detach().mean() for name, value in losses.items()}
        regularisers = regularisers_of(entries)
        finite = {name: value for name, value in entries.items() if bool(torch.isfinite(value))}
        if entries and len(finite) == len(entries):
            finite["loss"] = sum(
                v for name, v in entries.items() if "loss" in name or name in regularisers
            )
        return finite

    def parameter_tasks(self) -> dict[str, frozenset[str]]:
        """Every parameter's name → the tasks whose loss depends on it.

        Traced, not declared: one loss pass on the subclass's ``probe_batch()`` under
        ``loss_probe`` (so tracing at any step changes no random stream and no buffer), each
        task's loss differentiated with respect to every trainable parameter; a parameter
        belongs to a task when it is in that loss's autograd graph.
        """
        if self._parameter_tasks is None:
            with loss_probe(self):
                self._parameter_tasks = self._trace_parameter_tasks()
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


@contextmanager
def loss_probe(model: nn.Module) -> Iterator[None]:
    """A loss pass that changes nothing: training mode (what the balancer steps through: DINO's
    denoising queries and encoder proposals run only there) with the modules that drop at
    random (dropout, stochastic depth) in eval mode, so that no path is cut by chance; every
    random stream forked and every buffer (running statistics) restored afterwards."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    was_training = model.training
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    # the legacy global streams, which data pipelines and mmdet draw from
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    with torch.random.fork_rng(devices=devices):
        try:
            model.train()
            for module in model.modules():
                if _drops_at_random(module):
                    module.eval()
            yield
        finally:
            model.train(was_training)
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            random.setstate(python_state)
            np.random.set_state(numpy_state)  # noqa: NPY002


def task_of_loss(key: str) -> str | None:
    """``det`` for ``loss_det`` and for the detached terms ``det.cls``; None for other keys."""
    if key.startswith("loss_"):
        return key[len("loss_") :]
    return key.split(".", 1)[0] if "." in key else None


def agreed_tasks(labelled: Sequence[str], tasks: Sequence[str]) -> list[str]:
    """The tasks labelled on every rank (all of ``labelled`` in a single process), so that
    every rank takes the same kind of step and averages the same gradients."""
    if world_size() <= 1:
        return [t for t in tasks if t in labelled]
    present = torch.tensor([t in labelled for t in tasks], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        present = present.cuda()
    dist.all_reduce(present, op=dist.ReduceOp.MIN)
    return [t for t, ok in zip(tasks, present.tolist(), strict=True) if ok]


def _drops_at_random(module: nn.Module) -> bool:
    """Dropout of any kind, and stochastic depth / drop-block (timm's, mmcv's)."""
    return isinstance(module, nn.modules.dropout._DropoutNd) or type(module).__name__ in (
        "DropPath",
        "DropBlock2d",
    )
