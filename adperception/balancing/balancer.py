"""The step driver: a weighting, optionally a gradient aggregator, and the training step they need.

Every step is one of three kinds, planned before its forward (``plan``):

- ``"weighted"``: one backward of ``Σ_i w_i L_i`` plus the weighting's own objective, through
  the optim wrapper, with DDP's reducer averaging as usual;
- ``"task_gradients"`` (surgery steps, and the measurement steps that the diagnostics and the
  escalation read): ``TaskGradients`` takes one backward per task; each sharing group's Gram
  matrix gives the aggregator's task weights ``a_g`` and the group's update ``a_gᵀ G_g``; the
  task-private parameters keep their weighted gradient;
- ``"amortised"`` (between surgery steps, ``surgery_interval > 1``): the same update rule with
  each group's last ``a_g`` (``amortised_gradients``: from the inputs of the heads when the
  model records them, each head traversed once; otherwise one backward per group).

A model may also return *regularisers*, ``reg_<name>`` losses that belong to no task (sluice
networks' orthogonality penalty between subspaces): they are added at weight 1 to every step's
update, outside the weighting and the surgery, by their own backward on the per-task steps.

On the last two, DDP's reducer is bypassed (``no_sync``) and the balancer averages the gradients
over ranks itself, so every rank applies the identical update. Before any backward, the ranks
agree on which task losses are finite: a step in which any rank has a non-finite loss is skipped
on every rank, through the optim wrapper, which counts it. Under AMP the task losses are scaled
by the optim wrapper's GradScaler; Gram matrices are computed on unscaled gradients and the
update handed back scaled, so the scaler's own unscale, overflow check and scale update run
unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.distributed as dist
from mmengine.logging import MessageHub, MMLogger, print_log
from torch import Tensor, nn

from adperception.balancing import functional
from adperception.balancing.distributed import all_reduce_mean_, world_size
from adperception.balancing.layout import SharingLayout
from adperception.balancing.stats import GradientStats, GroupGradients, update_sign
from adperception.balancing.task_gradients import (
    HeadInputs,
    TaskGradients,
    amortised_gradients,
    loss_scaler,
)
from adperception.balancing.weighting import Weighting
from adperception.registry import BALANCERS

#: The kinds of training step ``GradientBalancer.plan`` returns.
#: "partial": a step on which some task has no labelled sample (``_partial_step``).
STEP_KINDS = ("weighted", "task_gradients", "amortised", "partial")
#: What a config may give a weighting-only ``model.balancer`` for the step driver.
DRIVER_ARGS = ("measure_interval", "chunk_numel", "bucket_numel", "batched_backward", "seed")
#: The key prefix of a model's losses that belong to no task (``reg_sluice_orthogonality``).
REGULARISER_PREFIX = "reg_"
#: Said with an unknown balancer argument: the usual cause is a base config's other balancer.
REPLACE_HINT = (
    "a config that sets only model.balancer.type keeps the other arguments of the balancer it "
    "inherits (the base configs' Escalation: conflict_threshold, patience, ...); replace the "
    "whole dict: balancer=dict(_delete_=True, type=...) in a config, or --cfg-options "
    "model.balancer._delete_=True model.balancer.type=... on the command line"
)


def regularisers_of(losses: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``reg_<name>`` entries of a model's losses."""
    return {k: v for k, v in losses.items() if k.startswith(REGULARISER_PREFIX)}


def agree_losses(task_losses: Tensor) -> tuple[Tensor, Tensor]:
    """Per task, whether its loss is finite on every rank (bool, T), and its mean over the
    ranks (float64, T; meaningful when all are finite): one all-reduce of 2T values under DDP,
    so that every rank skips the same steps and every weighting sees the whole batch's losses
    (N ranks of batch B weight as one process of N·B does)."""
    losses = task_losses.detach().to(torch.float64)
    summed = torch.cat([(~torch.isfinite(losses)).to(torch.float64), losses])
    if dist.is_available() and dist.is_initialized():
        summed = summed.to(task_losses.device)
        dist.all_reduce(summed)
        summed = summed.cpu()
    count = len(task_losses)
    return summed[:count] == 0, summed[count:] / world_size()


@BALANCERS.register_module()
class GradientBalancer(nn.Module):
    """A weighting with an optional gradient aggregator.

    Args:
        tasks: the model's tasks, in its order.
        aggregator: a name of ``functional.AGGREGATORS`` (``'pcgrad'``, ...), or None for the
            weighting alone; the registered ``PCGrad``, ``MGDA``, ... set it.
        weighting: a weighting config (``dict(type='UncertaintyWeighting')``) or module;
            equal weights when None.
        surgery_interval: aggregate per-task gradients every k-th step and reuse each sharing
            group's weights on the steps in between (1 = exact surgery at every step).
        measure_interval: take per-task gradients at every k-th iteration (the k-th, 2k-th, ...)
            for the diagnostics hook and the escalation, which read ``stats``; None: never
            (except on surgery steps, which measure anyway).
        chunk_numel: bound on the elements of per-task gradients held at once. The shared
            parameters are visited in chunks of at most this many elements, one backward per
            task and chunk, and each group's update is then applied by one more backward of
            its weighted loss: memory T × chunk_numel instead of T × shared, for more time.
        bucket_numel: elements per all-reduce when averaging gradients over ranks.
        batched_backward: the T task gradients of each chunk in one batched vector-Jacobian
            product (``is_grads_batched``, the same numbers) instead of T backwards; None: batched
            on a GPU, where it runs the T backwards in parallel, sequential on the CPU, where it
            measured 1.16x slower per PCGrad step (docs/benchmarks.md).
        seed: seeds the aggregator's randomness (PCGrad's order) per step, identically on every
            rank and across a resume.
        **aggregator_kwargs: the aggregator's own options (CAGrad's ``c``, ...).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        aggregator: str | None = None,
        weighting: dict | Weighting | None = None,
        surgery_interval: int = 1,
        measure_interval: int | None = None,
        chunk_numel: int | None = None,
        bucket_numel: int = 1 << 24,
        batched_backward: bool | None = None,
        seed: int = 0,
        **aggregator_kwargs,
    ) -> None:
        super().__init__()
        if surgery_interval < 1:
            raise ValueError(f"surgery_interval must be >= 1, got {surgery_interval}")
        if measure_interval is not None and measure_interval < 1:
            raise ValueError(f"measure_interval must be >= 1 or None, got {measure_interval}")
        if chunk_numel is not None and chunk_numel < 1:
            raise ValueError(f"chunk_numel must be >= 1 or None, got {chunk_numel}")
        if aggregator is not None and aggregator not in functional.AGGREGATORS:
            raise ValueError(
                f"unknown aggregator {aggregator!r}; known: {sorted(functional.AGGREGATORS)}"
            )
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
        self.aggregator = aggregator
        self.surgery_interval = surgery_interval
        self.measure_interval = measure_interval
        self.chunk_numel = chunk_numel
        self.bucket_numel = bucket_numel
        self.batched_backward = batched_backward
        self.seed = seed
        self.aggregator_kwargs = self._checked_aggregator_kwargs(aggregator, aggregator_kwargs)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("solver_failures", torch.zeros((), dtype=torch.long))
        # The weights of the last step on which every task had labels: a step that lacks some
        # task's labels (partial labels) trains the others with them (see ``train_step``).
        self.register_buffer("last_weights", torch.ones(len(self.tasks)))
        # Each sharing group's aggregator weights at the last surgery step, for the amortised
        # steps: row m for the group whose task set is the bit mask m (set where marked). A
        # buffer indexed by task set, so it checkpoints and resumes before the layout is known.
        sets = 2 ** len(self.tasks)
        coefficients = torch.zeros(sets, len(self.tasks), dtype=torch.float64)
        self.register_buffer("group_coefficients", coefficients)
        self.register_buffer("group_coefficients_set", torch.zeros(sets, dtype=torch.bool))
        self.stats: GradientStats | None = None
        self.peak_task_gradient_bytes = 0
        self._layout: SharingLayout | None = None

    @staticmethod
    def _checked_aggregator_kwargs(aggregator: str | None, kwargs: dict) -> dict:
        """Anything the aggregator does not take is a config error here, not at the first
        surgery step."""
        accepted: set[str] = set()
        if aggregator is not None:
            signature = inspect.signature(functional.AGGREGATORS[aggregator])
            accepted = set(signature.parameters) - {"gram", "generator"}
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise TypeError(
                f"balancer with aggregator {aggregator!r}: unknown argument(s) {unknown}; "
                "besides weighting, surgery_interval, measure_interval, chunk_numel, "
                f"bucket_numel, batched_backward and seed it takes {sorted(accepted) or 'nothing'}"
                f". If they are not yours: {REPLACE_HINT}"
            )
        return kwargs

    def _columns(self, tasks: Sequence[str]) -> tuple[int, list[int]]:
        columns = [self.tasks.index(t) for t in tasks]
        return sum(1 << c for c in columns), columns

    def coefficients_of(self, tasks: Sequence[str]) -> Tensor | None:
        """The last surgery step's weights of the sharing group of ``tasks``, if any."""
        mask, columns = self._columns(tasks)
        return self.group_coefficients[mask, columns] if self.group_coefficients_set[mask] else None

    def _store_coefficients(self, tasks: Sequence[str], a: Tensor) -> None:
        mask, columns = self._columns(tasks)
        self.group_coefficients[mask] = 0.0
        self.group_coefficients[mask, columns] = a.to(self.group_coefficients)
        self.group_coefficients_set[mask] = True

    # -- the plan of a step --------------------------------------------------------------------

    def layout(self, model: nn.Module) -> SharingLayout:
        if self._layout is None:
            self._layout = SharingLayout.from_model(
                self.tasks, model.named_parameters(), model.parameter_tasks()
            )
        return self._layout

    def active_aggregator(self) -> str | None:
        return self.aggregator

    @property
    def takes_manual_steps(self) -> bool:
        """Whether any step may set gradients itself (and so cannot accumulate micro-batches)."""
        return self.aggregator is not None or self.measure_interval is not None

    def measures_at(self, step: int) -> bool:
        """Whether step ``step`` (0-based) is a measurement step of ``measure_interval``."""
        return self.measure_interval is not None and (step + 1) % self.measure_interval == 0

    def plan(self, model: nn.Module) -> str:
        """The kind of the coming step (one of ``STEP_KINDS``), decided before its forward."""
        if not self.layout(model).groups:
            return "weighted"
        step = int(self.num_steps)
        if self.active_aggregator() is not None:
            if step % self.surgery_interval == 0 or self.measures_at(step):
                return "task_gradients"
            if all(self.coefficients_of(g.tasks) is not None for g in self.layout(model).groups):
                return "amortised"
            return "task_gradients"  # resumed mid-interval without coefficients: measure now
        return "task_gradients" if self.measures_at(step) else "weighted"

    # -- one training step ---------------------------------------------------------------------

    def train_step(
        self,
        model: nn.Module,
        losses: dict[str, Tensor],
        optim_wrapper,
        kind: str,
        head_inputs: HeadInputs | None = None,
    ) -> dict[str, Tensor]:
        """Backward and optimizer step for the per-task ``losses['loss_<task>']``; returns the
        values to log. ``kind`` is what ``plan`` returned before the forward. ``head_inputs``
        (per task, the tensors its head read; ``MultiTaskBaseModel.head_inputs``) let the
        amortised steps traverse each head once.

        On a ``partial`` step some task had no labelled sample in the batch (on some rank; the
        model left its loss out): the step is then a plain weighted one over the labelled tasks
        (``_partial_step``), and the absent task contributes nothing: no gradient, no backward,
        no measurement. The ``reg_<name>`` entries of ``losses`` (``regularisers_of``) are
        added to the update at weight 1 on every kind of step.
        """
        if kind not in STEP_KINDS:
            raise ValueError(f"step kind must be one of {STEP_KINDS}, got {kind!r}")
        if not hasattr(optim_wrapper, "apply_gradients"):
            raise TypeError(
                f"optim_wrapper.type is {type(optim_wrapper).__name__}; the balancer needs "
                "MTLOptimWrapper (or MTLAmpOptimWrapper), whose apply_gradients and skip_step "
                "are the step of per-task gradients and of a skipped step"
            )
        if kind == "partial":
            labelled = [t for t in self.tasks if f"loss_{t}" in losses]
            return self._partial_step(model, losses, labelled, optim_wrapper)
        missing = [t for t in self.tasks if f"loss_{t}" not in losses]
        if missing:
            raise ValueError(f"no loss for task(s) {missing} on a {kind!r} step (not 'partial')")
        # Per-task backwards start from each task's own loss (``rows``), never from a row of
        # the stacked tensor: differentiating ``stack(...)[i]`` sends zeros back through every
        # other task's graph, which doubled the cost of a per-task step (T = 4, quickstart).
        rows = [losses[f"loss_{t}"] for t in self.tasks]
        task_losses = torch.stack(rows)
        regularisers = regularisers_of(losses)
        finite, mean_losses = agree_losses(torch.stack([*rows, *regularisers.values()]))
        if not bool(finite.all()):
            logged = self._skip(optim_wrapper, [*self.tasks, *regularisers], finite)
            self.num_steps += 1
            return logged
        weights = self.weighting.weights(mean_losses[: len(self.tasks)].to(task_losses))
        regulariser = sum(regularisers.values()) if regularisers else None
        if kind == "weighted":
            self._weighted_step(model, task_losses, rows, weights, regulariser, optim_wrapper)
        else:
            self._manual_step(
                model, task_losses, rows, weights, regulariser, optim_wrapper, kind, head_inputs
            )
        self.num_steps += 1
        self.last_weights.copy_(weights.detach())
        logged = {f"weight_{t}": w.detach() for t, w in zip(self.tasks, weights, strict=True)}
        if int(self.solver_failures):
            logged["solver_failures"] = self.solver_failures.detach().double()
        return logged

    def _partial_step(
        self, model: nn.Module, losses: dict[str, Tensor], labelled: list[str], optim_wrapper
    ) -> dict[str, Tensor]:
        """One step on the labelled tasks only, each at its weight of the last fully labelled
        step: gradients of Σ w_t · L_t (averaged over ranks), no per-task backward, no
        surgery, no diagnostics, and no update of the weighting's state or parameters (a loss
        history or learned log-variance would otherwise see a task as absent, not as learnt).
        Parameters only the absent tasks use get no gradient at all, so the optimizer leaves
        them as they are."""
        self.num_steps += 1
        if not labelled:
            optim_wrapper.zero_grad()  # nothing to learn from; not a failure either
            return {}
        task_losses = torch.stack([losses[f"loss_{t}"] for t in labelled])
        regularisers = regularisers_of(losses)
        finite, _ = agree_losses(torch.stack([*task_losses, *regularisers.values()]))
        if not bool(finite.all()):
            return self._skip(optim_wrapper, [*labelled, *regularisers], finite)
        weights = self.last_weights[[self.tasks.index(t) for t in labelled]].to(task_losses)
        objective = weights @ task_losses + sum(regularisers.values())
        scaler = loss_scaler(optim_wrapper)
        if scaler is not None:
            objective = scaler.scale(objective)
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        used = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
        all_reduce_mean_([g for _, g in used], self.bucket_numel)
        for param, grad in used:
            param.grad = grad
        optim_wrapper.apply_gradients()
        return {f"weight_{t}": w.detach() for t, w in zip(labelled, weights, strict=True)}

    def _named(self, flags: Tensor) -> list[tuple[str, bool]]:
        return list(zip(self.tasks, flags.tolist(), strict=True))

    def _skip(self, optim_wrapper, names: list[str], finite: Tensor) -> dict[str, Tensor]:
        """Skip this step on every rank alike (the ranks agreed on ``finite``, one flag per
        task or regulariser of ``names``); returns what to log of the non-finite ones."""
        bad = [name for name, ok in zip(names, finite.tolist(), strict=True) if not ok]
        hub = MessageHub.get_current_instance()
        for task in bad:
            hub.update_info(f"nonfinite/{task}", hub.get_info(f"nonfinite/{task}", 0) + 1)
        what = "task(s)" if set(bad) <= set(self.tasks) else "task(s) or regulariser(s)"
        print_log(
            f"non-finite loss of {what} {bad} at iteration {int(self.num_steps) + 1} (on at "
            "least one rank); this step is skipped on every rank",
            logger=MMLogger.get_current_instance(),
            level=30,
        )
        optim_wrapper.skip_step()
        return {f"nonfinite.{name}": torch.tensor(1.0) for name in bad}

    def _gradient_norms(self, model: nn.Module, rows: Sequence[Tensor]) -> Tensor | None:
        """``‖∇_W L_i‖`` at the shared parameters the weighting picks, if it needs them."""
        if not self.weighting.needs_gradient_norms:
            return None
        layout = self.layout(model)
        shared = [p for g in layout.groups if len(g.tasks) == len(self.tasks) for p in g.params]
        if not shared:
            raise RuntimeError(
                f"{type(self.weighting).__name__} needs parameters shared by all tasks; "
                "this model has none"
            )
        params = self.weighting.gradient_norm_params(shared)
        norms = []
        for loss in rows:
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            sq = sum((g.double() ** 2).sum() for g in grads if g is not None)
            norms.append(torch.as_tensor(sq, dtype=torch.float64).sqrt())
        return torch.stack(norms)

    def _weighting_objective(
        self, model: nn.Module, task_losses: Tensor, rows: Sequence[Tensor], weights: Tensor
    ) -> Tensor | None:
        norms = self._gradient_norms(model, rows)
        return self.weighting.objective(task_losses, weights, norms)

    def _weighted_step(
        self,
        model: nn.Module,
        task_losses: Tensor,
        rows: Sequence[Tensor],
        weights: Tensor,
        regulariser: Tensor | None,
        optim_wrapper,
    ) -> None:
        objective = weights.detach() @ task_losses
        if regulariser is not None:
            objective = objective + regulariser
        own = self._weighting_objective(model, task_losses, rows, weights)
        optim_wrapper.update_params(objective if own is None else objective + own)

    def _regulariser_gradients(
        self, model: nn.Module, regulariser: Tensor | None, scaler: torch.amp.GradScaler | None
    ) -> dict[nn.Parameter, Tensor]:
        """The regularisers' gradients (rank-averaged, scaled as the task losses are), taken
        before the per-task backwards free the graph they share."""
        if regulariser is None:
            return {}
        if scaler is not None:
            regulariser = scaler.scale(regulariser)
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(regulariser, params, retain_graph=True, allow_unused=True)
        used = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
        all_reduce_mean_([g for _, g in used], self.bucket_numel)
        return dict(used)

    def _weighting_gradients(
        self,
        model: nn.Module,
        task_losses: Tensor,
        rows: Sequence[Tensor],
        weights: Tensor,
        scaler: torch.amp.GradScaler | None,
    ) -> dict[nn.Parameter, Tensor]:
        objective = self._weighting_objective(model, task_losses, rows, weights)
        if objective is None:
            return {}
        params = [p for p in self.weighting.parameters() if p.requires_grad]
        grads = [g.clone() for g in torch.autograd.grad(objective, params, retain_graph=True)]
        all_reduce_mean_(grads, self.bucket_numel)
        factor = scaler.get_scale() if scaler is not None else 1.0
        return {p: g * factor for p, g in zip(params, grads, strict=True)}

    def _manual_step(
        self,
        model: nn.Module,
        task_losses: Tensor,
        rows: Sequence[Tensor],
        weights: Tensor,
        regulariser: Tensor | None,
        optim_wrapper,
        kind: str,
        head_inputs: HeadInputs | None = None,
    ) -> None:
        layout = self.layout(model)
        scaler = loss_scaler(optim_wrapper)
        scaled = [w.detach() * loss for w, loss in zip(weights, rows, strict=True)]
        if scaler is not None:
            scaled = [scaler.scale(loss) for loss in scaled]
        own = self._weighting_gradients(model, task_losses, rows, weights, scaler)
        regularised = self._regulariser_gradients(model, regulariser, scaler)
        if kind == "amortised":
            coefficients = {g.name: self.coefficients_of(g.tasks) for g in layout.groups}
            grads = amortised_gradients(
                scaled, self.tasks, layout, coefficients, self.bucket_numel, head_inputs
            )
        else:
            grads = self._task_gradients(layout, task_losses, weights, scaled, scaler)
            if grads is None:
                self._skip_overflow(optim_wrapper, scaler)
                return
        for param, grad in regularised.items():
            grads[param] = grads[param] + grad if param in grads else grad
        for param, grad in [*grads.items(), *own.items()]:
            param.grad = grad
        optim_wrapper.apply_gradients()

    def _task_gradients(
        self,
        layout: SharingLayout,
        task_losses: Tensor,
        weights: Tensor,
        scaled: list[Tensor],
        scaler: torch.amp.GradScaler | None,
    ) -> dict[nn.Parameter, Tensor] | None:
        """One backward per task, the aggregator per group: the gradients to apply, or None
        when a task gradient is not finite (on any rank: the rows are rank-averaged)."""
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        batched = self.batched_backward
        if batched is None:
            batched = task_losses.device.type == "cuda"
        gradients = TaskGradients(
            self.tasks, layout, self.chunk_numel, self.bucket_numel, batched=batched
        )
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
        if not bool(gradients.finite.all()):
            self._count_nonfinite_gradients(gradients.finite, scaler)
            return None
        step = int(self.num_steps)
        stats = GradientStats(
            iter=step,
            loss_weights={t: float(w) for t, w in zip(self.tasks, weights.detach(), strict=True)},
        )
        aggregator = self.active_aggregator()
        generator = torch.Generator().manual_seed(self.seed + step)
        grads: dict[nn.Parameter, Tensor] = {}
        for group in layout.groups:
            gram = gradients.grams[group.name]
            a = self._aggregator_weights(aggregator, group.name, gram, generator)
            update = gradients.apply(group, a, scaled)
            grads.update((p, p.grad) for p in group.params)
            stats.groups[group.name] = GroupGradients(
                tasks=group.tasks,
                numel=group.numel,
                gram=gram,
                update_sign=update_sign(update),
                aggregator_weights=None if aggregator is None else a.float(),
            )
            if aggregator is not None:
                self._store_coefficients(group.tasks, a)
        grads.update(gradients.private)
        self.stats = stats
        self._after_measurement(stats)
        return grads

    def _aggregator_weights(
        self, aggregator: str | None, group: str, gram: Tensor, generator: torch.Generator
    ) -> Tensor:
        """``a_g`` of one group; equal weights, said loudly, when the aggregator's solver fails."""
        ones = torch.ones(gram.shape[0], dtype=torch.float64)
        if aggregator is None:
            return ones
        kwargs = dict(self.aggregator_kwargs)
        if "generator" in inspect.signature(functional.AGGREGATORS[aggregator]).parameters:
            kwargs["generator"] = generator
        try:
            return functional.AGGREGATORS[aggregator](gram, **kwargs).double()
        except functional.SolverError as error:
            self.solver_failures += 1
            hub = MessageHub.get_current_instance()
            hub.update_info("solver_failures", int(self.solver_failures))
            print_log(
                f"{aggregator} failed in sharing group {group} at iteration "
                f"{int(self.num_steps) + 1} ({error}); this step uses equal weights in that group "
                f"({int(self.solver_failures)} failure(s) so far, logged as solver_failures)",
                logger=MMLogger.get_current_instance(),
                level=30,
            )
            return ones

    def _count_nonfinite_gradients(
        self, finite: Tensor, scaler: torch.amp.GradScaler | None
    ) -> None:
        bad = [t for t, ok in self._named(finite) if not ok]
        hub = MessageHub.get_current_instance()
        for task in bad:
            key = f"nonfinite_grad/{task}"
            hub.update_info(key, hub.get_info(key, 0) + 1)
        print_log(
            f"non-finite gradient of task(s) {bad} at iteration {int(self.num_steps) + 1}; this "
            "step is skipped on every rank" + (" and the loss scale lowered" if scaler else ""),
            logger=MMLogger.get_current_instance(),
            level=30,
        )

    @staticmethod
    def _skip_overflow(optim_wrapper, scaler: torch.amp.GradScaler | None) -> None:
        """Under AMP, the scaler's own overflow path (it skips and backs off); else a skip."""
        if scaler is None:
            optim_wrapper.skip_step()
            return
        optim_wrapper.zero_grad()
        param = next(p for g in optim_wrapper.param_groups for p in g["params"])
        param.grad = torch.full_like(param, float("inf"))
        optim_wrapper.apply_gradients()

    def _after_measurement(self, stats: GradientStats) -> None:
        """Subclasses react to what a per-task step measured (the escalation does)."""

    def measurement_scalars(self) -> dict[str, float]:
        """What the balancer made of its latest measurement, for ``GradientDiagnosticsHook`` to
        log beside it as ``diag/<key>``: the escalation's signals and switches; none here."""
        return {}


def build_balancer(cfg: dict | None, tasks: Sequence[str]) -> GradientBalancer:
    """``model.balancer`` → a balancer; a weighting type alone means no aggregator."""
    cfg = dict(type="Escalation") if cfg is None else dict(cfg)
    kind = cfg.get("type")
    if isinstance(kind, str) and kind not in BALANCERS:
        raise ValueError(
            f"model.balancer.type {kind!r} is not registered; choose one of "
            f"{sorted(BALANCERS.module_dict)}"
        )
    target = BALANCERS.get(kind) if isinstance(kind, str) else kind
    if isinstance(target, type) and issubclass(target, Weighting):
        # a weighting alone: the step driver's own arguments (measure_interval, ...) go to it
        own = {k: cfg.pop(k) for k in DRIVER_ARGS if k in cfg}
        unknown = sorted(set(cfg) - {"type"} - set(inspect.signature(target).parameters))
        if unknown:
            raise TypeError(
                f"model.balancer: the weighting {kind!r} takes no argument(s) {unknown} (a "
                f"weighting alone takes its own and {', '.join(DRIVER_ARGS)}). If they are not "
                f"yours: {REPLACE_HINT}"
            )
        weighting = BALANCERS.build({**cfg, "tasks": tuple(tasks)})
        return GradientBalancer(tasks, weighting=weighting, **own)
    built = BALANCERS.build({**cfg, "tasks": tuple(tasks)})
    if not isinstance(built, GradientBalancer):
        raise TypeError(f"model.balancer type {kind!r} is not a balancer or weighting")
    return built
