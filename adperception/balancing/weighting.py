"""Loss weightings: per-task losses → per-task weights.

A weighting maps the T task losses of a step to T weights and, optionally, a regulariser; the
training objective is ``Σ_i w_i L_i + regulariser``. Weights may depend on the weighting's own
learnable parameters (uncertainty weighting, GradNorm), which then live in the model and are
optimised and checkpointed with it; every other piece of state is a buffer, so it is in the
checkpoint too and survives resume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from adperception.registry import BALANCERS

#: ``UncertaintyWeighting``'s forms: the c of ``c·e^(−s)·L + c·s``.
UNCERTAINTY_FORMS = {"kendall": 0.5, "unit": 1.0}
#: Added to the losses a weighting takes the log of or divides by (FAMO, LogLossWeighting).
LOSS_EPS = 1e-8


class Weighting(nn.Module):
    """Base class: equal weights, no state.

    ``weights(losses)`` is called once per training step with the task losses (T, detached,
    in the order of ``tasks``) averaged over the ranks, on every rank at the same steps (a
    skipped step calls it on none): every rank's weighting sees the same values and keeps the
    same state. ``objective(...)`` trains the weighting's own parameters.
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
    """Kendall, Gal & Cipolla 2018 (Eq. 7): a learned log-variance ``s_i = log σ_i²`` per task.

    The objective is ``Σ_i c·e^(−s_i)·L_i + c·s_i``: a task whose loss stays large gets its
    variance raised and its weight lowered, and the ``c·s`` term stops every variance from
    growing without bound. ``form='kendall'``: c = ½, the paper's Gaussian likelihood;
    ``form='unit'``: c = 1 (twice that objective). Both are stationary at ``s_i = log L_i``,
    where the weight is ``c / L_i``. ``init_log_var`` (a number, or a dict per task) sets ``s``
    at step 0; by default ``s₀ = log c`` (−log 2 for 'kendall', 0 for 'unit'), so that every
    weight starts at exactly 1 and a short schedule is not run at half the learning rate.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        *,
        form: str = "kendall",
        init_log_var: float | dict[str, float] | None = None,
    ) -> None:
        super().__init__(tasks)
        if form not in UNCERTAINTY_FORMS:
            raise ValueError(
                f"UncertaintyWeighting.form must be one of {sorted(UNCERTAINTY_FORMS)}, "
                f"not {form!r}"
            )
        self.form = form
        self.scale = UNCERTAINTY_FORMS[form]
        start = math.log(self.scale)  # c·e^(−s₀) = 1
        if isinstance(init_log_var, dict):
            init = [float(init_log_var.get(t, start)) for t in self.tasks]
        else:
            init = [start if init_log_var is None else float(init_log_var)] * self.num_tasks
        self.log_vars = nn.Parameter(torch.tensor(init))

    def weights(self, losses: Tensor) -> Tensor:
        return self.scale * torch.exp(-self.log_vars.to(losses))

    def regulariser(self) -> Tensor:
        return self.scale * self.log_vars.sum()


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


def _batch_losses(losses: Tensor, weighting: str) -> Tensor:
    """The task losses plus ε, in float64 (the step driver gives every weighting the losses
    averaged over ranks, so these are the whole batch's)."""
    mean = losses.detach().to(torch.float64)
    if bool((mean < 0).any()):
        raise ValueError(f"{weighting} takes the log of the losses; got negative {mean.tolist()}")
    return mean + LOSS_EPS


@BALANCERS.register_module()
class FAMO(Weighting):
    """FAMO (Liu et al. 2023, Alg. 1): an equal rate of decrease of the log losses, from the
    losses alone (no per-task backward; O(T) extra work per step).

    Logits ξ (0 at start), z = softmax(ξ). Step t trains on ``Σ_i w_i L_i`` with
    ``w_i = T·c·z_i / L_i``, ``c = (Σ_j z_j / L_j)^(−1)``: the gradient of ``Σ_i z_i log L_i``
    scaled by T·c, Alg. 1's update (whose weights sum to 1; here to T, as equal weights do).
    ξ follows the change of the log losses, ``δ_i = log L_i(t−1) − log L_i(t)``:
    ``ξ ← ξ − β·Adam(J_z(ξ)ᵀ δ + γ ξ)``, ``J_zᵀ δ = z ⊙ (δ − zᵀδ)``, β = ``lr``, γ = ``decay``
    (Alg. 1 writes a plain gradient step; the authors' code takes it with torch's Adam, betas
    (0.9, 0.999), eps 1e-8, as here, and their defaults). A task whose log loss falls slower
    than the others' gains weight.

    The paper evaluates L(t) on step t−1's batch after its update, one more forward; here it is
    step t's own loss: the update of step t−1 is applied when step t's losses arrive, before
    step t's weights. Losses are rank-averaged (every rank holds the same ξ) and must not be
    negative; ε = 1e-8 is added, as in the authors' code. All state is buffers.
    """

    def __init__(self, tasks: Sequence[str], *, lr: float = 0.025, decay: float = 0.01) -> None:
        super().__init__(tasks)
        if lr <= 0 or decay < 0:
            raise ValueError(f"FAMO needs lr > 0 and decay >= 0, got lr={lr}, decay={decay}")
        self.lr = lr
        self.decay = decay
        t = self.num_tasks
        self.register_buffer("logits", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("previous", torch.zeros(t, dtype=torch.float64))  # log L(t−1)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("adam_m", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("adam_v", torch.zeros(t, dtype=torch.float64))

    def weights(self, losses: Tensor) -> Tensor:
        batch = _batch_losses(losses, "FAMO").to(self.logits)
        log_losses = batch.log()
        if int(self.steps) > 0:
            self._update_logits(self.previous - log_losses)
        self.previous.copy_(log_losses)
        self.steps += 1
        inverse = torch.softmax(self.logits, dim=0) / batch
        return (self.num_tasks * inverse / inverse.sum()).to(losses)

    @torch.no_grad()
    def _update_logits(self, delta: Tensor) -> None:
        z = torch.softmax(self.logits, dim=0)
        grad = z * (delta - z @ delta) + self.decay * self.logits
        self.adam_m.mul_(0.9).add_(0.1 * grad)
        self.adam_v.mul_(0.999).add_(0.001 * grad**2)
        n = int(self.steps)  # Adam's step count: 1 at the first update
        m = self.adam_m / (1 - 0.9**n)
        v = self.adam_v / (1 - 0.999**n)
        self.logits.sub_(self.lr * m / (v.sqrt() + 1e-8))


@BALANCERS.register_module()
class RLW(Weighting):
    """Random loss weighting (Lin et al. 2022): new random weights at every step.

    ``w = T·softmax(z)``, ``z ~ N(0, I)`` drawn anew each step (the paper's softmax sums to 1;
    here the weights sum to T, as equal weights do). The draws come from NumPy's generator
    seeded by (``sample_seed``, step), the step count a buffer: every rank draws the same
    weights and a resumed run continues the same sequence. ``sample_seed``, not ``seed``: a
    weighting-only ``model.balancer`` hands ``seed`` to the step driver.
    """

    def __init__(self, tasks: Sequence[str], *, sample_seed: int = 0) -> None:
        super().__init__(tasks)
        if sample_seed < 0:
            raise ValueError(f"RLW.sample_seed must be >= 0, got {sample_seed}")
        self.sample_seed = sample_seed
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def weights(self, losses: Tensor) -> Tensor:
        rng = np.random.default_rng((self.sample_seed, int(self.steps)))
        self.steps += 1
        z = torch.from_numpy(rng.standard_normal(self.num_tasks))
        return (self.num_tasks * torch.softmax(z, dim=0)).to(losses)


@BALANCERS.register_module()
class LogLossWeighting(Weighting):
    """DB-MTL's loss-scale balancing (Lin et al. 2023): train on ``Σ_i log L_i``, not ``Σ_i L_i``.

    As weights, ``w_i = 1 / (L_i + ε)``, detached: ``∇ log(L_i + ε) = ∇L_i / (L_i + ε)``, so each
    task counts by its relative change, whatever its loss's units (ε = 1e-8 as in DB-MTL's code).
    This is DB-MTL's first half only; its gradient-magnitude balancing (an EMA of each task's
    log-loss gradient, each rescaled to the largest norm) needs per-task gradient state and is
    not here. Losses are rank-averaged, so N ranks of batch B step along ``∇ log`` of the
    whole batch's losses, as one process of N·B does; they must not be negative.
    """

    def weights(self, losses: Tensor) -> Tensor:
        return (1 / _batch_losses(losses, "LogLossWeighting")).to(losses)
