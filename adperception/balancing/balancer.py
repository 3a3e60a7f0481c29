"""The balancer: a weighting, optionally a gradient aggregator, and the training step they need.

``GradientBalancer`` owns one training step's backward and optimizer step. A step is either

- *weighted*: one backward of ``Σ_i c_i w_i L_i`` (``w`` from the weighting, ``c`` the amortised
  aggregator weights or 1), through the optim wrapper, DDP's reducer averaging as usual; or
- *per-task* (surgery steps, and measurement steps for the diagnostics and the escalation): one
  backward per task through exactly the parameters its loss depends on; each sharing group's
  task gradients, averaged over ranks in flat buckets, form the rows of a matrix G_g whose Gram
  matrix gives the aggregator's task weights a_g; the group's update is ``a_gᵀ G_g``; the
  task-private parameters keep their weighted gradient. DDP's reducer is bypassed on these
  steps (``no_sync``), so every rank applies the identical update.

Under AMP the task losses are scaled by the optim wrapper's one GradScaler; the Gram matrix is
computed on unscaled gradients, the update is handed back scaled so the scaler's own unscale,
overflow check and scale update run unchanged, and a non-finite task gradient is counted per
task (``nonfinite_grad/<task>`` in the message hub) and the step skipped.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from mmengine.logging import MessageHub, MMLogger, print_log
from torch import Tensor, nn

from adperception.balancing import functional
from adperception.balancing.distributed import all_reduce_mean_
from adperception.balancing.layout import SharingGroup, SharingLayout
from adperception.balancing.stats import GradientStats, GroupGradients
from adperception.balancing.weighting import GradNorm, Weighting
from adperception.registry import BALANCERS


def _loss_scaler(optim_wrapper) -> torch.amp.GradScaler | None:
    scaler = getattr(optim_wrapper, "loss_scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


class _TaskGradients:
    """Per-task gradients of one step: Gram matrices per sharing group, private gradients.

    The shared parameters are visited in chunks (one chunk when ``chunk_numel`` is None); per
    chunk, one backward per task through the chunk's parameters it shares (and, with the first
    chunk, its private ones), the rows averaged over ranks, unscaled into the group's Gram
    matrix. Unchunked, the rows are kept and the update is ``aᵀ G``; chunked, they are dropped
    and the update is one more backward of the group's re-weighted loss.
    """

    def __init__(
        self,
        tasks: tuple[str, ...],
        layout: SharingLayout,
        chunk_numel: int | None,
        bucket_numel: int,
    ) -> None:
        self.tasks = tasks
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
            for i, task in enumerate(self.tasks):
                params = [p for g, p in chunk if task in g.tasks]
                extra = list(self.layout.private[task]) if c == 0 else []
                if not params and not extra:
                    continue
                grads = torch.autograd.grad(
                    scaled[i], params + extra, retain_graph=True, allow_unused=True
                )
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
                ok = torch.isfinite(block).all(dim=1)
                for k, task in enumerate(group.tasks):
                    self.finite[self.tasks.index(task)] &= bool(ok[k])
                if bool(ok.all()):
                    unscaled = block.double() / scale
                    self.grams[name] += (unscaled @ unscaled.T).cpu()
                size = block.numel() * block.element_size()
                self.peak_bytes = max(self.peak_bytes, held + size)
                if self.keep_rows:
                    self.rows[name].append(block)
                    held += size
            if c == 0:
                for i, task in enumerate(self.tasks):
                    for param in self.layout.private[task]:
                        self.finite[i] &= bool(torch.isfinite(self.private[param]).all())

    def apply(self, group: SharingGroup, a: Tensor, scaled: list[Tensor]) -> Tensor:
        """Set the group's parameters' ``.grad`` to its update; returns the flat update."""
        params = list(group.params)
        if self.keep_rows:
            update = torch.cat([a.to(block) @ block for block in self.rows[group.name]])
            pieces = update.split([p.numel() for p in params])
            grads = [piece.view_as(p).clone() for piece, p in zip(pieces, params, strict=True)]
        else:
            loss = sum(
                float(a[k]) * scaled[self.tasks.index(task)] for k, task in enumerate(group.tasks)
            )
            found = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            grads = [
                torch.zeros_like(p) if g is None else g for p, g in zip(params, found, strict=True)
            ]
            all_reduce_mean_(grads, self.bucket_numel)
            update = torch.cat([g.reshape(-1) for g in grads])
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        return update


@BALANCERS.register_module()
class GradientBalancer(nn.Module):
    """A weighting with, in subclasses, a gradient aggregator.

    Args:
        tasks: the model's tasks, in its order.
        weighting: a weighting config (``dict(type='UncertaintyWeighting')``) or module;
            equal weights when None.
        surgery_interval: aggregate per-task gradients every k-th step and reuse the task
            weights derived then on the steps in between, with one weighted backward (1 =
            exact surgery at every step). Between surgery steps each task's loss is scaled by
            its weight in the largest sharing group it belongs to.
        chunk_numel: bound on the elements of per-task gradients held at once. The shared
            parameters are visited in chunks of at most this many elements, one backward per
            task and chunk, and each group's update is then applied by one more backward of
            its weighted loss: memory T × chunk_numel instead of T × shared, for more time.
        bucket_numel: elements per all-reduce when averaging gradients over ranks.
        seed: seeds the aggregator's randomness (PCGrad's order) per step, identically on every
            rank and across a resume.
    """

    aggregator: str | None = None

    def __init__(
        self,
        tasks: Sequence[str],
        weighting: dict | Weighting | None = None,
        surgery_interval: int = 1,
        chunk_numel: int | None = None,
        bucket_numel: int = 1 << 24,
        seed: int = 0,
        **aggregator_kwargs,
    ) -> None:
        super().__init__()
        if surgery_interval < 1:
            raise ValueError(f"surgery_interval must be >= 1, got {surgery_interval}")
        if chunk_numel is not None and chunk_numel < 1:
            raise ValueError(f"chunk_numel must be >= 1 or None, got {chunk_numel}")
        self.tasks = tuple(tasks)
        if weighting is None:
            weighting = dict(type="EqualWeighting")
        if isinstance(weighting, dict):
            weighting = BALANCERS.build({**weighting, "tasks": self.tasks})
        if not isinstance(weighting, Weighting):
            raise TypeError(f"balancer.weighting must be a weighting, got {type(weighting)}")
        if weighting.tasks != self.tasks:
            raise ValueError(f"weighting tasks {weighting.tasks} != balancer tasks {self.tasks}")
        self.weighting = weighting
        self.surgery_interval = surgery_interval
        self.chunk_numel = chunk_numel
        self.bucket_numel = bucket_numel
        self.seed = seed
        self.aggregator_kwargs = self._checked_aggregator_kwargs(aggregator_kwargs)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("task_coefficients", torch.ones(len(self.tasks), dtype=torch.float64))
        self.measure_next_step = False
        self.stats: GradientStats | None = None
        self.peak_task_gradient_bytes = 0
        self._layout: SharingLayout | None = None

    @classmethod
    def _checked_aggregator_kwargs(cls, kwargs: dict) -> dict:
        """The aggregator's own options (CAGrad's ``c``, ...); anything else is a config error
        here rather than at the first surgery step."""
        accepted: set[str] = set()
        if cls.aggregator is not None:
            signature = inspect.signature(functional.AGGREGATORS[cls.aggregator])
            accepted = set(signature.parameters) - {"gram", "generator"}
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise TypeError(
                f"balancer {cls.__name__}: unknown argument(s) {unknown}; besides weighting, "
                "surgery_interval, chunk_numel, bucket_numel and seed it takes "
                f"{sorted(accepted) or 'nothing'}"
            )
        return kwargs

    # -- the plan of a step --------------------------------------------------------------------

    def layout(self, model: nn.Module) -> SharingLayout:
        if self._layout is None:
            self._layout = SharingLayout.from_model(
                self.tasks, model.named_parameters(), model.parameter_tasks()
            )
        return self._layout

    def active_aggregator(self) -> str | None:
        return self.aggregator

    def needs_task_gradients(self, model: nn.Module) -> bool:
        """Whether the coming step computes per-task gradients (decided before its forward)."""
        if not self.layout(model).groups:
            return False
        if self.measure_next_step:
            return True
        return (
            self.active_aggregator() is not None
            and int(self.num_steps) % self.surgery_interval == 0
        )

    # -- one training step ---------------------------------------------------------------------

    def train_step(
        self,
        model: nn.Module,
        losses: dict[str, Tensor],
        optim_wrapper,
        task_gradients: bool,
    ) -> dict[str, Tensor]:
        """Backward and optimizer step for the per-task ``losses['loss_<task>']``."""
        task_losses = torch.stack([losses[f"loss_{t}"] for t in self.tasks])
        if not torch.isfinite(task_losses).all():
            # skipped and counted by the optim wrapper; the weighting must not see the values
            optim_wrapper.update_params(task_losses.sum())
            self.measure_next_step = False
            self.num_steps += 1
            return {}
        weights = self.weighting.weights(task_losses.detach())
        if task_gradients:
            self._task_gradient_step(model, task_losses, weights, optim_wrapper)
        else:
            self._weighted_step(model, task_losses, weights, optim_wrapper)
        self.measure_next_step = False
        self.num_steps += 1
        effective = (weights.detach().double() * self.task_coefficients).tolist()
        return {f"weight_{t}": torch.tensor(w) for t, w in zip(self.tasks, effective, strict=True)}

    def _balancer_objective(self, task_losses: Tensor, weights: Tensor) -> Tensor | None:
        """The part of the objective that trains the weighting's own parameters."""
        if not any(p.requires_grad for p in self.weighting.parameters()):
            return None
        if isinstance(self.weighting, GradNorm):  # trained by its own loss, after the backward
            return sum(p.sum() for p in self.weighting.parameters()) * 0.0
        objective = weights @ task_losses.detach()
        regulariser = self.weighting.regulariser()
        return objective if regulariser is None else objective + regulariser

    def _weighted_step(
        self, model: nn.Module, task_losses: Tensor, weights: Tensor, optim_wrapper
    ) -> None:
        coefficients = (weights.detach() * self.task_coefficients.to(weights)).detach()
        objective = coefficients @ task_losses
        balancer_term = self._balancer_objective(task_losses, weights)
        if balancer_term is not None:
            objective = objective + balancer_term
        if not isinstance(self.weighting, GradNorm):
            optim_wrapper.update_params(objective)
            return
        optim_wrapper.backward(optim_wrapper.scale_loss(objective), retain_graph=True)
        self._set_gradnorm_gradients(model, task_losses, weights, _loss_scaler(optim_wrapper))
        if optim_wrapper.should_update():
            optim_wrapper.step()
            optim_wrapper.zero_grad()

    def _set_gradnorm_gradients(
        self,
        model: nn.Module,
        task_losses: Tensor,
        weights: Tensor,
        scaler: torch.amp.GradScaler | None,
    ) -> None:
        """GradNorm's weight gradient: ``G_i = w_i ‖∇_W L_i‖``, exact in w without a 2nd-order
        graph, with the norms of each task's raw gradient at W taken once per step."""
        layout = self.layout(model)
        shared = [p for g in layout.groups if len(g.tasks) == len(self.tasks) for p in g.params]
        if not shared:
            raise RuntimeError("GradNorm needs parameters shared by all tasks; this model has none")
        if self.weighting.grad_params == "last_shared":
            shared = [next(p for p in reversed(shared) if p.dim() > 1)]
        norms = []
        for loss in task_losses:
            grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            sq = sum((g.double() ** 2).sum() for g in grads if g is not None)
            norms.append(torch.as_tensor(sq, dtype=torch.float64).sqrt())
        raw_norms = torch.stack(norms).to(weights)
        gradnorm_loss = self.weighting.gradnorm_loss(weights * raw_norms, task_losses)
        params = list(self.weighting.parameters())
        grads = [g.clone() for g in torch.autograd.grad(gradnorm_loss, params)]
        all_reduce_mean_(grads, self.bucket_numel)
        factor = scaler.get_scale() if scaler is not None else 1.0
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad * factor

    def _task_gradient_step(
        self, model: nn.Module, task_losses: Tensor, weights: Tensor, optim_wrapper
    ) -> None:
        layout = self.layout(model)
        scaler = _loss_scaler(optim_wrapper)
        net_weights = weights.detach()
        scaled = [net_weights[i] * task_losses[i] for i in range(len(self.tasks))]
        if scaler is not None:
            scaled = [scaler.scale(loss) for loss in scaled]
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        gradients = _TaskGradients(self.tasks, layout, self.chunk_numel, self.bucket_numel)
        gradients.compute(scaled, scale)
        if self.peak_task_gradient_bytes == 0:
            groups = ", ".join(f"{g.name} ({g.numel / 1e6:.2f} M)" for g in layout.groups)
            print_log(
                f"per-task gradients over the shared parameters of {groups}: "
                f"{gradients.peak_bytes / 2**20:.1f} MiB held at peak "
                f"(chunk_numel={self.chunk_numel})",
                logger=MMLogger.get_current_instance(),
            )
        self.peak_task_gradient_bytes = max(self.peak_task_gradient_bytes, gradients.peak_bytes)
        balancer_grads = self._balancer_gradients(model, task_losses, weights, scaler)
        if not bool(gradients.finite.all()):
            self._skip_nonfinite(gradients.finite, optim_wrapper, scaler)
            return
        stats = GradientStats(
            iter=int(self.num_steps),
            loss_weights={t: float(w) for t, w in zip(self.tasks, net_weights, strict=True)},
        )
        aggregator = self.active_aggregator()
        generator = torch.Generator().manual_seed(self.seed + int(self.num_steps))
        group_weights: dict[str, Tensor] = {}
        for group in layout.groups:
            gram = gradients.grams[group.name]
            if aggregator is None:
                a = torch.ones(len(group.tasks), dtype=torch.float64)
            else:
                kwargs = dict(self.aggregator_kwargs)
                if aggregator == "pcgrad":
                    kwargs["generator"] = generator
                a = functional.AGGREGATORS[aggregator](gram, **kwargs).double()
            group_weights[group.name] = a
            update = gradients.apply(group, a, scaled)
            stats.groups[group.name] = GroupGradients(
                tasks=group.tasks,
                numel=group.numel,
                gram=gram,
                update_sign=torch.sign(update).to(torch.int8).cpu(),
                aggregator_weights=None if aggregator is None else a.float(),
            )
        for param, grad in [*gradients.private.items(), *balancer_grads.items()]:
            param.grad = grad
        if aggregator is not None:
            self._cache_task_coefficients(layout, group_weights)
        self.stats = stats
        self._after_measurement(stats)
        optim_wrapper.step()
        optim_wrapper.zero_grad()

    def _balancer_gradients(
        self,
        model: nn.Module,
        task_losses: Tensor,
        weights: Tensor,
        scaler: torch.amp.GradScaler | None,
    ) -> dict[nn.Parameter, Tensor]:
        if isinstance(self.weighting, GradNorm):
            self._set_gradnorm_gradients(model, task_losses, weights, scaler)
            return {}
        objective = self._balancer_objective(task_losses, weights)
        if objective is None:
            return {}
        params = [p for p in self.weighting.parameters() if p.requires_grad]
        grads = [g.clone() for g in torch.autograd.grad(objective, params, retain_graph=True)]
        all_reduce_mean_(grads, self.bucket_numel)
        factor = scaler.get_scale() if scaler is not None else 1.0
        return {p: g * factor for p, g in zip(params, grads, strict=True)}

    def _skip_nonfinite(
        self, finite: Tensor, optim_wrapper, scaler: torch.amp.GradScaler | None
    ) -> None:
        bad = [t for t, ok in zip(self.tasks, finite.tolist(), strict=True) if not ok]
        hub = MessageHub.get_current_instance()
        for task in bad:
            key = f"nonfinite_grad/{task}"
            hub.update_info(key, hub.get_info(key, 0) + 1)
        print_log(
            f"non-finite gradient of task(s) {bad} at balancer step {int(self.num_steps)}; "
            "this step is skipped" + (" and the loss scale lowered" if scaler else ""),
            logger=MMLogger.get_current_instance(),
            level=30,
        )
        optim_wrapper.zero_grad()
        if scaler is not None:  # the scaler's own overflow path: it skips and backs off
            param = next(p for g in optim_wrapper.param_groups for p in g["params"])
            param.grad = torch.full_like(param, float("inf"))
            optim_wrapper.step()
            optim_wrapper.zero_grad()

    def _cache_task_coefficients(
        self, layout: SharingLayout, group_weights: dict[str, Tensor]
    ) -> None:
        """Per task, its weight in the largest group it shares, for the amortised steps."""
        coefficients = torch.ones(len(self.tasks), dtype=torch.float64)
        for i, task in enumerate(self.tasks):
            group = layout.largest_group_of(task)
            if group is not None:
                coefficients[i] = group_weights[group.name][group.tasks.index(task)]
        self.task_coefficients.copy_(coefficients)

    def _after_measurement(self, stats: GradientStats) -> None:
        """Subclasses react to what a per-task step measured (the escalation does)."""


@BALANCERS.register_module()
class PCGrad(GradientBalancer):
    """Projecting conflicting gradients (Yu et al. 2020), in every sharing group."""

    aggregator = "pcgrad"


@BALANCERS.register_module()
class CAGrad(GradientBalancer):
    """Conflict-averse gradient descent (Liu et al. 2021); ``c`` (default 0.4) as in the paper."""

    aggregator = "cagrad"


@BALANCERS.register_module()
class IMTLG(GradientBalancer):
    """IMTL-G (Liu et al. 2021): equal projections of the update onto every task gradient."""

    aggregator = "imtl_g"


@BALANCERS.register_module()
class MGDA(GradientBalancer):
    """MGDA (Désidéri 2012, Sener & Koltun 2018): the min-norm point of the gradients' hull."""

    aggregator = "mgda"


@BALANCERS.register_module()
class NashMTL(GradientBalancer):
    """Nash-MTL (Navon et al. 2022): the Nash bargaining solution among the task gradients."""

    aggregator = "nash_mtl"


def build_balancer(cfg: dict | None, tasks: Sequence[str]) -> GradientBalancer:
    """``model.balancer`` → a balancer; a weighting type alone means no aggregator."""
    cfg = dict(type="Escalation") if cfg is None else dict(cfg)
    built = BALANCERS.build({**cfg, "tasks": tuple(tasks)})
    if isinstance(built, Weighting):
        return GradientBalancer(tasks, weighting=built)
    if not isinstance(built, GradientBalancer):
        raise TypeError(f"model.balancer type {cfg.get('type')!r} is not a balancer or weighting")
    return built
