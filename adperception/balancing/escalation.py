"""The default balancer: FAMO's loss weighting that escalates on the symptoms it measures, to
PCGrad on persistent conflict and to gradient-norm equalisation on persistent imbalance."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from mmengine.logging import MMLogger, print_log
from torch import Tensor, nn

from adperception.balancing.balancer import GradientBalancer
from adperception.balancing.stats import GradientStats, cosine_matrix, task_norms
from adperception.balancing.weighting import Weighting
from adperception.registry import BALANCERS


def conflict_strength(gram: Tensor) -> float:
    """How hard a group's task gradients pull apart: the mean over task pairs of
    ``max(0, −cos)``. 0 when no pair conflicts; unlike the 0/1 conflict rate, a pair barely
    past orthogonal (cos −0.02) counts for little, and a two-task group is not all or nothing."""
    cos = cosine_matrix(gram)
    rows, cols = torch.triu_indices(*cos.shape, offset=1)
    if rows.numel() == 0:
        return 0.0
    return float((-cos[rows, cols]).clamp(min=0).mean())


def norm_imbalance(gram: Tensor) -> float:
    """How far a group's task gradient norms are apart: ``log10(max ‖g_i‖ / min ‖g_i‖)`` over
    the tasks with a non-zero gradient (0: equal norms, 1: one tenfold another's)."""
    norms = task_norms(gram)
    norms = norms[norms > torch.finfo(torch.float64).eps * norms.max().clamp(min=1e-300)]
    if norms.numel() < 2:
        return 0.0
    return math.log10(float(norms.max() / norms.min()))


class Symptom(nn.Module):
    """One escalation signal: a moving average from 0 (``momentum``), the count of
    measurements in a row above ``threshold``, the last ``patience`` values (the evidence) and
    whether and when it switched. Buffers, so checkpoints hold and resume it; a changed
    ``patience`` cuts or pads the window of recent values."""

    def __init__(self, threshold: float, momentum: float, patience: int) -> None:
        super().__init__()
        self.threshold = threshold
        self.momentum = momentum
        self.patience = patience
        self.register_buffer("ema", torch.zeros((), dtype=torch.float64))
        self.register_buffer("above", torch.zeros((), dtype=torch.long))
        self.register_buffer("recent", torch.zeros(patience, dtype=torch.float64))
        self.register_buffer("switched", torch.zeros((), dtype=torch.bool))
        self.register_buffer("switched_at", torch.full((), -1, dtype=torch.long))

    def observe(self, value: float, step: int) -> bool:
        """Take one measurement; True when this one makes the symptom switch."""
        # From 0, not from the first value: one early measurement must not hold the average
        # above the threshold through the patience window on its own.
        self.ema.mul_(self.momentum).add_((1 - self.momentum) * value)
        self.recent.copy_(torch.cat([self.recent[1:], self.recent.new([value])]))
        if float(self.ema) > self.threshold:
            self.above += 1
        else:
            self.above.zero_()
        if bool(self.switched) or int(self.above) < self.patience:
            return False
        self.switched.fill_(True)
        self.switched_at.fill_(step)
        return True

    def evidence(self) -> str:
        recent = ", ".join(f"{v:.2f}" for v in self.recent.tolist())
        return (
            f"moving average {float(self.ema):.3f} above {self.threshold} for {self.patience} "
            f"measurements (the worst group's values: {recent})"
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = f"{prefix}recent"
        stored = state_dict.get(key)
        if stored is not None and stored.shape != self.recent.shape:
            recent = stored[-self.patience :]  # the latest values, newest last
            state_dict[key] = torch.cat([recent.new_zeros(self.patience - len(recent)), recent])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


#: The symptoms the escalation reads, each with its remedy and what its signal measures: the
#: names of ``Escalation.measurement_scalars``' keys, which ``tools/analyze_logs.py`` draws.
SYMPTOMS: dict[str, tuple[str, str]] = {
    "conflict": ("PCGrad", "conflict strength: mean max(0, -cos) over task pairs"),
    "imbalance": ("equal gradient norms", "norm imbalance: log10(max / min gradient norm)"),
}


@BALANCERS.register_module()
class Escalation(GradientBalancer):
    """A loss weighting that escalates on the two classic failures of multi-task training.

    The weighting is FAMO's (Liu et al. 2023) unless ``weighting`` names another: it costs no
    per-task backward and, on SynthDrive, beat the escalation from uncertainty weighting in the
    Δm sweep and on every dense task of the quickstart (docs/experiments/synthdrive_findings.md
    §4, docs/benchmarks.md); ``weighting=dict(type="UncertaintyWeighting")`` is the earlier
    default.

    Every ``measure_interval`` steps the per-task (weighted) gradients are measured on every
    sharing group (the step's update is the plain weighted one, so measuring changes nothing),
    and two signals of the worst group are taken:

    - *conflict*, ``conflict_strength``: the mean cosine magnitude of conflicting pairs; the
      remedy is PCGrad (Yu et al. 2020);
    - *imbalance*, ``norm_imbalance``: log10 of the ratio of the largest to the smallest task
      gradient norm (one task dominating the shared parameters); the remedy is to equalise the
      norms (GradNorm's target, Chen et al. 2018, applied directly to the gradients).

    Each signal's moving average (``momentum``, from 0) above its threshold for ``patience``
    measurements in a row switches its remedy on, for good; both on gives PCGrad on the
    norm-equalised gradients. The defaults (a fivefold norm ratio, momentum 0.5, patience 2)
    act within the first tenth of a short schedule: FAMO's weights, near c / loss, leave a
    detector's set loss (high floor) 5-30x below the dense tasks on the shared parameters, a
    ratio that hovered about the earlier tenfold threshold (momentum 0.8, patience 5) and
    switched late or never; on the Δm sweep they give -0.11 ± 3.15 % against -9.58 ± 5.57 %
    (docs/experiments/synthdrive_findings.md §8). From the first switch on, surgery runs every
    ``surgery_interval`` steps, while the weighting keeps learning and the heads keep their
    weighted gradient. Every switch is logged with its evidence; the state is buffers, so it is
    in every checkpoint and resumes (also with another ``patience``).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        weighting: dict | Weighting | None = None,
        measure_interval: int = 50,
        conflict_threshold: float = 0.1,
        imbalance_threshold: float = 0.7,
        momentum: float = 0.5,
        patience: int = 2,
        **kwargs,
    ) -> None:
        if weighting is None:
            weighting = dict(type="FAMO")
        super().__init__(tasks, weighting=weighting, measure_interval=measure_interval, **kwargs)
        if patience < 1 or not 0.0 <= momentum < 1.0:
            raise ValueError("Escalation: patience >= 1, 0 <= momentum < 1")
        self.patience = patience
        self.conflict = Symptom(conflict_threshold, momentum, patience)
        self.imbalance = Symptom(imbalance_threshold, momentum, patience)
        self.register_buffer("measurements", torch.zeros((), dtype=torch.long))

    @property
    def escalated(self) -> Tensor:
        """Whether any remedy is on."""
        return self.conflict.switched | self.imbalance.switched

    @property
    def escalated_at(self) -> Tensor:
        """The step (0-based) of the first switch, −1 before it."""
        steps = [s.switched_at for s in (self.conflict, self.imbalance) if bool(s.switched)]
        return min(steps) if steps else self.conflict.switched_at

    def active_aggregator(self) -> str | None:
        conflict, imbalance = bool(self.conflict.switched), bool(self.imbalance.switched)
        if conflict and imbalance:
            return "pcgrad_equal_norm"
        if conflict:
            return "pcgrad"
        return "equal_norm" if imbalance else None

    def measurement_scalars(self) -> dict[str, float]:
        """Per symptom (``conflict``, ``imbalance``): the worst group's value at the latest
        measurement, its moving average, the threshold that average is held to, and whether
        the remedy is on (1.0): the escalation's decision, drawn by ``tools/analyze_logs.py``."""
        if int(self.measurements) == 0:
            return {}
        scalars = {}
        for name in SYMPTOMS:
            symptom: Symptom = getattr(self, name)
            scalars[f"escalation/{name}"] = float(symptom.recent[-1])
            scalars[f"escalation/{name}_average"] = float(symptom.ema)
            scalars[f"escalation/{name}_threshold"] = float(symptom.threshold)
            scalars[f"escalation/{name}_on"] = float(symptom.switched)
        return scalars

    def _after_measurement(self, stats: GradientStats) -> None:
        if not self.measures_at(stats.iter):
            return  # a surgery step's record between measurements
        self.measurements += 1
        conflicts = {name: conflict_strength(g.gram) for name, g in stats.groups.items()}
        imbalances = {name: norm_imbalance(g.gram) for name, g in stats.groups.items()}
        switched = []
        if self.conflict.observe(max(conflicts.values()), stats.iter):
            per_group = ", ".join(f"{n}: {v:.2f}" for n, v in conflicts.items())
            switched.append(
                f"conflict → PCGrad: the conflict strength's {self.conflict.evidence()}; at "
                f"this one, per group: {per_group}"
            )
        if self.imbalance.observe(max(imbalances.values()), stats.iter):
            worst = max(imbalances, key=imbalances.get)
            group = stats.groups[worst]
            norms = ", ".join(
                f"{t} {n:.3g}"
                for t, n in zip(group.tasks, task_norms(group.gram).tolist(), strict=True)
            )
            switched.append(
                f"imbalance → equal gradient norms: log10 of the norm ratio's "
                f"{self.imbalance.evidence()}; at this one, {worst}'s weighted gradient norms: "
                f"{norms}"
            )
        for text in switched:
            print_log(
                f"balancer escalates at iteration {stats.iter + 1}: {text}; the update is now "
                f"{self.active_aggregator()}",
                logger=MMLogger.get_current_instance(),
                level=30,
            )
