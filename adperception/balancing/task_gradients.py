"""Per-task gradients of one step over the model's sharing groups.

The engine under every per-task step: one backward per task through exactly the parameters its
loss depends on, shared parameters visited in chunks (bounded memory), each chunk's rows
averaged over ranks in flat buckets and unscaled (AMP) into the group's Gram matrix, the bytes
held at peak recorded. ``amortised_gradients`` is the amortised counterpart: one backward per
sharing group of its own re-weighted loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from adperception.balancing.distributed import all_reduce_mean_
from adperception.balancing.layout import SharingGroup, SharingLayout

#: Per task, the tensors its head read in the step's forward (``MultiTaskBaseModel.head_inputs``).
HeadInputs = Mapping[str, Sequence[Tensor]]


def loss_scaler(optim_wrapper) -> torch.amp.GradScaler | None:
    scaler = getattr(optim_wrapper, "loss_scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def unscaled_gram(rows: Tensor, scale: float, columns: int = 1 << 20) -> Tensor:
    """``(R/scale)(R/scale)ᵀ`` in float64 on the CPU, accumulated over slices of ``columns``
    columns: float64 precision without a float64 copy of all the rows at once (which, with the
    quotient, held four times the rows' float32 size at the step's memory peak)."""
    gram = torch.zeros(len(rows), len(rows), dtype=torch.float64, device=rows.device)
    for start in range(0, rows.shape[1], columns):
        piece = rows[:, start : start + columns].double()
        gram.addmm_(piece, piece.T)
        del piece  # before the next slice is made
    return (gram / scale**2).cpu()


class TaskGradients:
    """Per-task gradients of one step: Gram matrices per sharing group, private gradients.

    The shared parameters are visited in chunks (one chunk when ``chunk_numel`` is None); per
    chunk, one backward per task through the chunk's parameters it shares (and, with the first
    chunk, its private ones), or with ``batched`` one batched vector-Jacobian product of the T
    losses against the T one-hot cotangents (``torch.autograd.grad(..., is_grads_batched=True)``:
    the same gradients, a task's row zero where it reaches nothing), the rows averaged over
    ranks, unscaled into the group's Gram matrix. Unchunked, the rows are kept and the update is
    ``aᵀ G``; chunked, they are dropped and the update is one more backward of the group's
    re-weighted loss.
    """

    def __init__(
        self,
        tasks: tuple[str, ...],
        layout: SharingLayout,
        chunk_numel: int | None,
        bucket_numel: int,
        *,
        batched: bool = False,
    ) -> None:
        self.tasks = tasks
        self.batched = batched
        self.layout = layout
        self.groups = {g.name: g for g in layout.groups}
        self.bucket_numel = bucket_numel
        self.keep_rows = chunk_numel is None
        entries = [(g, p) for g in layout.groups for p in g.params]
        self.chunks: list[list[tuple[SharingGroup, nn.Parameter]]] = [[]]
        size = 0
        for group, param in entries:
            if chunk_numel is not None and self.chunks[-1] and size + param.numel() > chunk_numel:
                self.chunks.append([])
                size = 0
            self.chunks[-1].append((group, param))
            size += param.numel()
        self.grams = {
            g.name: torch.zeros(len(g.tasks), len(g.tasks), dtype=torch.float64)
            for g in layout.groups
        }
        self.rows: dict[str, list[Tensor]] = {g.name: [] for g in layout.groups}
        self.private: dict[nn.Parameter, Tensor] = {}
        self.finite = torch.ones(len(tasks), dtype=torch.bool)
        self.peak_bytes = 0

    def compute(self, scaled: list[Tensor], scale: float) -> None:
        held = 0
        for c, chunk in enumerate(self.chunks):
            blocks: dict[str, Tensor] = {}
            offsets: dict[nn.Parameter, tuple[str, int]] = {}
            for group in self.layout.groups:
                params = [p for g, p in chunk if g is group]
                if not params:
                    continue
                offset = 0
                for param in params:
                    offsets[param] = (group.name, offset)
                    offset += param.numel()
                ref = params[0]
                blocks[group.name] = torch.zeros(
                    len(group.tasks), offset, dtype=ref.dtype, device=ref.device
                )
            private: list[Tensor] = []
            found = self._batched_grads(scaled, chunk, c) if self.batched else None
            for i, task in enumerate(self.tasks):
                params = [p for g, p in chunk if task in g.tasks]
                extra = list(self.layout.private[task]) if c == 0 else []
                if not params and not extra:
                    continue
                if found is None:
                    grads = torch.autograd.grad(
                        scaled[i], params + extra, retain_graph=True, allow_unused=True
                    )
                else:
                    grads = [found[p][i] if p in found else None for p in params + extra]
                for param, grad in zip(params, grads[: len(params)], strict=True):
                    if grad is not None:
                        name, offset = offsets[param]
                        row = self.groups[name].tasks.index(task)
                        blocks[name][row, offset : offset + param.numel()] = grad.reshape(-1)
                for param, grad in zip(extra, grads[len(params) :], strict=True):
                    self.private[param] = torch.zeros_like(param) if grad is None else grad
                    private.append(self.private[param])
            all_reduce_mean_(list(blocks.values()) + private, self.bucket_numel)
            for name, block in blocks.items():
                group = self.groups[name]
                gram = unscaled_gram(block, scale)
                # a row is finite iff its squared norm is: float32 values squared and summed in
                # float64 cannot overflow
                ok = torch.isfinite(gram.diagonal())
                for k, task in enumerate(group.tasks):
                    self.finite[self.tasks.index(task)] &= bool(ok[k])
                if bool(ok.all()):
                    self.grams[name] += gram
                size = block.numel() * block.element_size()
                self.peak_bytes = max(self.peak_bytes, held + size)
                if self.keep_rows:
                    self.rows[name].append(block)
                    held += size
            if c == 0:
                for i, task in enumerate(self.tasks):
                    for param in self.layout.private[task]:
                        self.finite[i] &= bool(torch.isfinite(self.private[param]).all())

    def _batched_grads(
        self, scaled: list[Tensor], chunk: list[tuple[SharingGroup, nn.Parameter]], c: int
    ) -> dict[nn.Parameter, Tensor]:
        """Every task's gradient at every parameter of the chunk (and, with the first chunk,
        the private ones): parameter → T×shape, from one batched backward."""
        params = list(dict.fromkeys([p for _, p in chunk]))
        if c == 0:
            params += [p for task in self.tasks for p in self.layout.private[task]]
        losses = torch.stack([loss.reshape(()) for loss in scaled])
        cotangents = torch.eye(len(scaled), dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(
            losses,
            params,
            grad_outputs=cotangents,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        return {p: g for p, g in zip(params, grads, strict=True) if g is not None}

    def apply(self, group: SharingGroup, a: Tensor, scaled: list[Tensor]) -> Tensor:
        """Set the group's parameters' ``.grad`` to its update; returns the flat update."""
        params = list(group.params)
        if self.keep_rows:
            update = torch.cat([a.to(block) @ block for block in self.rows[group.name]])
            # the parameters' gradients are views of the one update: no second copy of it
            pieces = update.split([p.numel() for p in params])
            grads = [piece.view_as(p) for piece, p in zip(pieces, params, strict=True)]
        else:
            grads = _group_backward(group, a, self.tasks, scaled)
            all_reduce_mean_(grads, self.bucket_numel)
            update = torch.cat([g.reshape(-1) for g in grads])
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        return update


def _through_head_inputs(
    scaled: list[Tensor],
    tasks: tuple[str, ...],
    layout: SharingLayout,
    coefficients: dict[str, Tensor],
    head_inputs: HeadInputs,
) -> dict[nn.Parameter, Tensor]:
    """The amortised gradients, each head traversed once.

    Task k's loss depends on the shared parameters only through its head's inputs ``x``: one
    backward from ``w_k L_k`` gives its private gradient and the cotangents ``h_k = ∂(w_k L_k)/∂x``;
    then one backward per group from the inputs its tasks read, with cotangents
    ``Σ_k a_g,k h_k``, gives ``Σ_k a_g,k ∇_θ(w_k L_k)`` at the group's parameters θ (the chain
    rule, linear in the cotangent). The same gradients as the group backwards of the re-weighted
    losses, which each pass through all their tasks' heads again (the detector's decoder, on
    the quickstart, the most expensive part of a step).
    """
    grads: dict[nn.Parameter, Tensor] = {}
    pulls: dict[str, dict[int, tuple[Tensor, Tensor]]] = {g.name: {} for g in layout.groups}
    for i, task in enumerate(tasks):
        private = list(layout.private[task])
        inputs = [x for x in head_inputs[task] if x.requires_grad]
        found = torch.autograd.grad(
            scaled[i], private + inputs, retain_graph=True, allow_unused=True
        )
        grads.update(zip(private, _or_zeros(private, found[: len(private)]), strict=True))
        for group in layout.groups:
            if task not in group.tasks:
                continue
            a = float(coefficients[group.name][group.tasks.index(task)])
            for x, h in zip(inputs, found[len(private) :], strict=True):
                if h is not None:
                    _, pull = pulls[group.name].setdefault(id(x), (x, torch.zeros_like(x)))
                    pull.add_(h, alpha=a)
    for group in layout.groups:
        entries = list(pulls[group.name].values())
        found = (
            torch.autograd.grad(
                [x for x, _ in entries],
                group.params,
                grad_outputs=[v for _, v in entries],
                retain_graph=True,
                allow_unused=True,
            )
            if entries
            else [None] * len(group.params)
        )
        grads.update(zip(group.params, _or_zeros(group.params, found), strict=True))
    return grads


def _or_zeros(params: Sequence[nn.Parameter], found: Sequence[Tensor | None]) -> list[Tensor]:
    """``torch.autograd.grad(..., allow_unused=True)``'s gradients, zeros where it found none."""
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, found, strict=True)]


def _group_backward(
    group: SharingGroup,
    a: Tensor,
    tasks: tuple[str, ...],
    scaled: list[Tensor],
    extra: tuple[nn.Parameter, ...] = (),
) -> list[Tensor]:
    """The gradient of ``Σ_k a_k L_k`` over the group's tasks, at the group's parameters and
    then at ``extra``'s."""
    params = (*group.params, *extra)
    loss = sum(float(a[k]) * scaled[tasks.index(task)] for k, task in enumerate(group.tasks))
    found = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return _or_zeros(params, found)


#: A task's private parameters ride on a group's backward when its coefficient there is at
#: least this fraction of the group's largest (dividing by a smaller one would lose precision).
RIDE_TOLERANCE = 1e-3


def _riders(
    tasks: tuple[str, ...], layout: SharingLayout, coefficients: dict[str, Tensor]
) -> tuple[dict[str, list[str]], list[str]]:
    """Per group, the tasks whose private parameters take their gradient from its backward
    (each task in the group where its coefficient is largest in magnitude), and the tasks left
    for a backward of their own (coefficient near 0 in every group holding them)."""
    riders: dict[str, list[str]] = {g.name: [] for g in layout.groups}
    alone = []
    for task in tasks:
        if not layout.private[task]:
            continue
        holding = [g for g in layout.groups if task in g.tasks]
        best = max(
            holding,
            key=lambda g: abs(float(coefficients[g.name][g.tasks.index(task)])),
            default=None,
        )
        if best is None:
            alone.append(task)
            continue
        a = coefficients[best.name].abs()
        if float(a[best.tasks.index(task)]) >= RIDE_TOLERANCE * float(a.max()):
            riders[best.name].append(task)
        else:
            alone.append(task)
    return riders, alone


def amortised_gradients(
    scaled: list[Tensor],
    tasks: tuple[str, ...],
    layout: SharingLayout,
    coefficients: dict[str, Tensor],
    bucket_numel: int,
    head_inputs: HeadInputs | None = None,
) -> dict[nn.Parameter, Tensor]:
    """The gradients of a step between surgery steps, rank-averaged.

    Each sharing group's parameters get ``Σ_k a_g,k ∇(w_k L_k)``, with the group's own last
    aggregator weights ``a_g``, as on a surgery step with those weights; task-private
    parameters get their plain weighted gradient, as on a surgery step. ``scaled`` are the
    weighted (and, under AMP, scaled) task losses in ``tasks`` order.

    With ``head_inputs`` (per task, the tensors its head read, ``_through_head_inputs``) every
    head is traversed once. Without, one backward per group of its re-weighted loss, which
    passes through the heads of all its tasks again: a task's private parameters depend on its
    loss alone, so a group backward gives them ``a_g,k ∇(w_k L_k)``, divided by ``a_g,k`` their
    gradient (one backward per group in all, where a separate one for the private parameters
    cost a quarter of the quickstart's amortised step).
    """
    if head_inputs is not None:
        grads = _through_head_inputs(scaled, tasks, layout, coefficients, head_inputs)
        all_reduce_mean_(list(grads.values()), bucket_numel)
        return grads
    grads: dict[nn.Parameter, Tensor] = {}
    riders, alone = _riders(tasks, layout, coefficients)
    for group in layout.groups:
        a = coefficients[group.name]
        extra = tuple(p for task in riders[group.name] for p in layout.private[task])
        found = _group_backward(group, a, tasks, scaled, extra)
        grads.update(zip(group.params, found[: len(group.params)], strict=True))
        rest = iter(found[len(group.params) :])
        for task in riders[group.name]:
            factor = float(a[group.tasks.index(task)])
            grads.update((p, next(rest) / factor) for p in layout.private[task])
    private = [p for task in alone for p in layout.private[task]]
    if private:
        loss = sum(scaled[tasks.index(task)] for task in alone)
        found = torch.autograd.grad(loss, private, retain_graph=True, allow_unused=True)
        grads.update(zip(private, _or_zeros(private, found), strict=True))
    all_reduce_mean_(list(grads.values()), bucket_numel)
    return grads
