"""Loss weightings: per-task losses → per-task weights.

A weighting maps the T task losses of a step to T weights and, optionally, a regulariser; the
training objective is ``Σ_i w_i L_i + regulariser``. Weights may depend on the weighting's own
learnable parameters (uncertainty weighting, GradNorm), which then live in the model and are
optimised and checkpointed with it; every other piece of state is a buffer, so it is in the
checkpoint too and survives resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from adperception.registry import BALANCERS


class Weighting(nn.Module):
    """Base class: equal weights, no state.

    ``weights(losses)`` is called once per training step with the detached task losses (T,),
    in the order of ``tasks``; ``objective(...)`` is what trains the weighting's own parameters.
    """

    #: Whether ``objective`` needs the tasks' gradient norms at the shared parameters.
    needs_gradient_norms = False

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        if len(tasks) == 0:
            raise ValueError("a weighting needs at least one task")
        self.tasks = tuple(tasks)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def weights(self, losses: Tensor) -> Tensor:
        return torch.ones_like(losses)

    def regulariser(self) -> Tensor | None:
        return None

    def objective(
        self, losses: Tensor, weights: Tensor, gradient_norms: Tensor | None = None
    ) -> Tensor | None:
        """The term added to the training objective whose gradient trains this weighting's
        own parameters (None when it has none): by default ``Σ_i w_i L_i`` with the losses
        detached, plus the regulariser. ``gradient_norms`` (T,): ``‖∇_W L_i‖`` at the
        parameters ``gradient_norm_params`` picks, given when ``needs_gradient_norms``."""
        if not any(p.requires_grad for p in self.parameters()):
            return None
        objective = weights @ losses.detach()
        regulariser = self.regulariser()
        return objective if regulariser is None else objective + regulariser

    def gradient_norm_params(self, shared: list[nn.Parameter]) -> list[nn.Parameter]:
        """Of the parameters all tasks share, those whose gradient norms ``objective`` needs."""
        return shared


@BALANCERS.register_module()
class EqualWeighting(Weighting):
    """Every task weight 1: the plain sum of the task losses."""


@BALANCERS.register_module()
class StaticWeighting(Weighting):
    """Fixed weights from the config: ``weights=dict(det=1.0, seg=0.5, ...)`` (missing → 1)."""

    def __init__(self, tasks: Sequence[str], weights: dict[str, float]) -> None:
        super().__init__(tasks)
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise ValueError(f"StaticWeighting.weights: unknown task(s) {unknown}; tasks: {tasks}")
        if any(float(w) < 0 for w in weights.values()):
            raise ValueError(f"StaticWeighting.weights must be >= 0, got {weights}")
        static = torch.tensor([float(weights.get(t, 1.0)) for t in self.tasks])
        self.register_buffer("static", static)

    def weights(self, losses: Tensor) -> Tensor:
        return self.static.to(losses)


@BALANCERS.register_module()
class UncertaintyWeighting(Weighting):
    """Kendall, Gal & Cipolla 2018: a learned log-variance ``s_i = log σ_i²`` per task.

    The objective is ``Σ_i ½·exp(−s_i)·L_i + ½·s_i``: a task whose loss stays large gets its
    variance raised and its weight lowered, and the ``½·s`` term stops every variance from
    growing without bound. ``init_log_var`` sets ``s`` at step 0 (0 → weights ½).
    """

    def __init__(self, tasks: Sequence[str], init_log_var: float | dict[str, float] = 0.0) -> None:
        super().__init__(tasks)
        if isinstance(init_log_var, dict):
            init = [float(init_log_var.get(t, 0.0)) for t in self.tasks]
        else:
            init = [float(init_log_var)] * self.num_tasks
        self.log_vars = nn.Parameter(torch.tensor(init))

    def weights(self, losses: Tensor) -> Tensor:
        return 0.5 * torch.exp(-self.log_vars.to(losses))

    def regulariser(self) -> Tensor:
        return 0.5 * self.log_vars.sum()


@BALANCERS.register_module()
class DWA(Weighting):
    """Dynamic Weight Average (Liu, Johns & Davison 2019).

    ``w_i = T·softmax_i(r_i / temperature)`` with ``r_i = L̄_i(e−1) / L̄_i(e−2)``, the ratio of
    the task's mean loss over the last two epochs; equal weights for the first two. Training
    here is iteration based, so an epoch is ``epoch_iters`` steps.
    """

    def __init__(
        self, tasks: Sequence[str], temperature: float = 2.0, epoch_iters: int = 100
    ) -> None:
        super().__init__(tasks)
        if temperature <= 0 or epoch_iters < 1:
            raise ValueError("DWA needs temperature > 0 and epoch_iters >= 1")
        self.temperature = temperature
        self.epoch_iters = epoch_iters
        t = self.num_tasks
        self.register_buffer("epoch_sum", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("epoch_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_means", torch.zeros(2, t, dtype=torch.float64))  # e−2, e−1
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))

    def weights(self, losses: Tensor) -> Tensor:
        if int(self.epochs_done) >= 2:
            ratio = self.epoch_means[1] / self.epoch_means[0].clamp_min(1e-12)
            weights = self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)
        else:
            weights = torch.ones(self.num_tasks, dtype=torch.float64)
        self._observe(losses)
        return weights.to(losses)

    @torch.no_grad()
    def _observe(self, losses: Tensor) -> None:
        self.epoch_sum += losses.detach().to(self.epoch_sum)
        self.epoch_steps += 1
        if int(self.epoch_steps) == self.epoch_iters:
            mean = self.epoch_sum / self.epoch_iters
            self.epoch_means.copy_(torch.stack([self.epoch_means[1], mean]))
            self.epochs_done += 1
            self.epoch_sum.zero_()
            self.epoch_steps.zero_()


@BALANCERS.register_module()
class TrendWeighting(Weighting):
    """Weights from each task's smoothed loss trajectory; the slowest learners are pushed up.

    Per task: the smoothed loss ``m_i`` (an exponential moving average, ``momentum``), its
    progress ``p_i = m_i / L_i(0)`` and its recent log-slope ``r_i`` (EMA of ``Δ log m_i`` per
    step). The forecast ``f_i = p_i · exp(r_i · horizon)`` is where the task's relative loss is
    heading; ``w ∝ f^exponent``, renormalised to sum to T. ``exponent=0`` gives equal weights;
    larger exponents react harder. Equal weights during the first ``warmup`` steps.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        exponent: float = 1.0,
        momentum: float = 0.9,
        horizon: float = 100.0,
        warmup: int = 10,
    ) -> None:
        super().__init__(tasks)
        if exponent < 0 or not 0.0 <= momentum < 1.0 or horizon < 0 or warmup < 1:
            raise ValueError("TrendWeighting: exponent >= 0, 0 <= momentum < 1, warmup >= 1")
        self.exponent = exponent
        self.momentum = momentum
        self.horizon = horizon
        self.warmup = warmup
        t = self.num_tasks
        self.register_buffer("initial", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("smoothed", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("slope", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def weights(self, losses: Tensor) -> Tensor:
        self._observe(losses)
        if int(self.steps) <= self.warmup or self.exponent == 0:
            return torch.ones_like(losses)
        progress = self.smoothed / self.initial.clamp_min(1e-12)
        forecast = progress * torch.exp(self.slope * self.horizon)
        raw = forecast.clamp_min(1e-12) ** self.exponent
        return (self.num_tasks * raw / raw.sum()).to(losses)

    @torch.no_grad()
    def _observe(self, losses: Tensor) -> None:
        value = losses.detach().to(self.smoothed).clamp_min(1e-12)
        if int(self.steps) == 0:
            self.initial.copy_(value)
            self.smoothed.copy_(value)
        else:
            previous = self.smoothed.clone()
            self.smoothed.mul_(self.momentum).add_((1 - self.momentum) * value)
            step = torch.log(self.smoothed) - torch.log(previous)
            self.slope.mul_(self.momentum).add_((1 - self.momentum) * step)
        self.steps += 1


@BALANCERS.register_module()
class GradNorm(Weighting):
    """GradNorm (Chen et al. 2018): weights that equalise the tasks' training rates.

    Learned weights ``w`` (renormalised to sum to T at every use); after each backward the
    balancer calls ``gradnorm_loss`` with the tasks' gradient norms ``G_i = ‖∇_W w_i L_i‖`` at
    the shared parameters W (``grad_params='last_shared'``: the last weight tensor shared by all
    tasks, as in the paper; ``'all_shared'``: every shared parameter) and sets ``w``'s gradient
    from ``Σ_i |G_i − Ḡ·r_i^α|``, with ``r_i`` the task's inverse training rate
    ``(L_i/L_i(0)) / mean_j(L_j/L_j(0))`` and the target held constant. ``G_i = w_i ‖∇_W L_i‖``
    is exact in ``w`` without a second-order graph: the raw norms are taken once per step.
    """

    needs_gradient_norms = True

    def __init__(
        self, tasks: Sequence[str], alpha: float = 1.5, grad_params: str = "last_shared"
    ) -> None:
        super().__init__(tasks)
        if grad_params not in ("last_shared", "all_shared"):
            raise ValueError(
                f"GradNorm.grad_params must be 'last_shared' or 'all_shared', not {grad_params!r}"
            )
        self.alpha = alpha
        self.grad_params = grad_params
        self.raw_weights = nn.Parameter(torch.ones(self.num_tasks))
        self.register_buffer("initial", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def weights(self, losses: Tensor) -> Tensor:
        if not bool(self.started):
            self.initial.copy_(losses.detach().to(self.initial).clamp_min(1e-12))
            self.started.fill_(True)
        positive = self.raw_weights.clamp_min(1e-4)
        return (self.num_tasks * positive / positive.sum()).to(losses)

    def gradient_norm_params(self, shared: list[nn.Parameter]) -> list[nn.Parameter]:
        if self.grad_params == "last_shared":
            return [next(p for p in reversed(shared) if p.dim() > 1)]
        return shared

    def objective(
        self, losses: Tensor, weights: Tensor, gradient_norms: Tensor | None = None
    ) -> Tensor:
        if gradient_norms is None:
            raise ValueError("GradNorm's objective needs the tasks' gradient norms")
        return self.gradnorm_loss(weights * gradient_norms.to(weights), losses)

    def gradnorm_loss(self, norms: Tensor, losses: Tensor) -> Tensor:
        """The paper's L_grad: ``norms`` (T,) carry the graph back to the weights."""
        ratio = losses.detach().to(self.initial) / self.initial
        inverse_rate = ratio / ratio.mean()
        target = (norms.detach().mean() * inverse_rate.to(norms) ** self.alpha).detach()
        return (norms - target).abs().sum()
