"""The default balancer: uncertainty weighting that escalates to PCGrad on persistent conflict."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.logging import MMLogger, print_log

from adperception.balancing.balancer import GradientBalancer
from adperception.balancing.stats import GradientStats, conflict_rate
from adperception.balancing.weighting import Weighting
from adperception.registry import BALANCERS


@BALANCERS.register_module()
class Escalation(GradientBalancer):
    """Uncertainty weighting that switches to PCGrad when gradient conflict persists.

    Every ``measure_interval`` steps the per-task gradients are measured (the step's update is
    the plain weighted one, so measuring changes nothing) and the conflict rate of each sharing
    group is taken; the largest feeds an exponential moving average (``momentum``, starting
    from 0 so that the evidence has to accumulate). When that average exceeds ``threshold`` at
    ``patience`` measurements in a row, PCGrad takes over on
    the weighted task gradients, with ``surgery_interval`` as for ``PCGrad``, while the
    weighting (and uncertainty weighting's log-variances) keeps learning. The switch is logged
    with its evidence, and the state is buffers, so it is in every checkpoint and resumes (also
    with another ``patience``: the window of recent rates is cut or padded to it).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        weighting: dict | Weighting | None = None,
        measure_interval: int = 50,
        threshold: float = 0.4,
        momentum: float = 0.8,
        patience: int = 5,
        **kwargs,
    ) -> None:
        if weighting is None:
            weighting = dict(type="UncertaintyWeighting")
        super().__init__(tasks, weighting=weighting, measure_interval=measure_interval, **kwargs)
        if patience < 1 or not 0.0 <= momentum < 1.0:
            raise ValueError("Escalation: patience >= 1, 0 <= momentum < 1")
        self.threshold = threshold
        self.momentum = momentum
        self.patience = patience
        self.register_buffer("escalated", torch.zeros((), dtype=torch.bool))
        self.register_buffer("escalated_at", torch.full((), -1, dtype=torch.long))
        self.register_buffer("conflict_ema", torch.zeros((), dtype=torch.float64))
        self.register_buffer("measurements", torch.zeros((), dtype=torch.long))
        self.register_buffer("above_threshold", torch.zeros((), dtype=torch.long))
        # the worst group's rate at the last ``patience`` measurements: the switch's evidence
        self.register_buffer("recent_rates", torch.zeros(patience, dtype=torch.float64))

    def active_aggregator(self) -> str | None:
        return "pcgrad" if bool(self.escalated) else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = f"{prefix}recent_rates"
        stored = state_dict.get(key)
        if stored is not None and stored.shape != self.recent_rates.shape:
            # a resume with another patience: keep the latest rates, newest last
            recent = stored[-self.patience :]
            state_dict[key] = torch.cat([recent.new_zeros(self.patience - len(recent)), recent])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _after_measurement(self, stats: GradientStats) -> None:
        if bool(self.escalated):
            return
        rates = {name: conflict_rate(group.gram) for name, group in stats.groups.items()}
        worst = max(rates.values())
        # From 0, not from the first value: one conflicting measurement early in training must
        # not hold the average above the threshold through the patience window on its own.
        self.conflict_ema.mul_(self.momentum).add_((1 - self.momentum) * worst)
        self.recent_rates.copy_(torch.cat([self.recent_rates[1:], self.recent_rates.new([worst])]))
        self.measurements += 1
        if float(self.conflict_ema) > self.threshold:
            self.above_threshold += 1
        else:
            self.above_threshold.zero_()
        if int(self.above_threshold) < self.patience:
            return
        self.escalated.fill_(True)
        self.escalated_at.fill_(stats.iter)
        evidence = ", ".join(f"{name}: {rate:.2f}" for name, rate in rates.items())
        recent = ", ".join(f"{rate:.2f}" for rate in self.recent_rates.tolist())
        print_log(
            f"balancer escalates to PCGrad at iteration {stats.iter + 1}: the moving average of "
            f"the conflict rate, {float(self.conflict_ema):.3f}, stayed above {self.threshold} for "
            f"{self.patience} measurements {self.measure_interval} steps apart (the worst sharing "
            f"group's rate at those measurements: {recent}; at this one, per group: {evidence})",
            logger=MMLogger.get_current_instance(),
            level=30,
        )
