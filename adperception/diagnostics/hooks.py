"""The hook that logs what the balancer's gradient measurements say (docs/design.md §6)."""

from __future__ import annotations

import math

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from adperception.balancing.stats import (
    GradientStats,
    GroupGradients,
    conflict_rate,
    cosine_matrix,
    task_norms,
)
from adperception.diagnostics.gradients import collapsed_tasks, sign_flip_rate
from adperception.registry import HOOKS


@HOOKS.register_module()
class GradientDiagnosticsHook(Hook):
    """Per-task gradient norms, cosines, conflict and sign-flip rates on the shared parameters of
    every sharing group, loss ratios, loss weights and collapse warnings.

    The balancer measures every ``model.balancer.measure_interval`` iterations (one number, set
    on the balancer, which the escalation decides on too); after each measurement step it logs
    through the visualizer at that step (``vis_data/scalars.json``, TensorBoard; rank 0 only, by
    mmengine):

    - ``diag/<group>/grad_norm/<task>``: the task's gradient norm before its loss weight, and
      ``diag/<group>/weighted_grad_norm/<task>`` after it;
    - ``diag/<group>/cos/<a>-<b>`` for every pair a before b in the group's task order;
    - ``diag/<group>/conflict_rate``, and ``diag/<group>/sign_flip_rate`` against the group's
      previous measurement (from the second measurement of a process on);
    - ``diag/<group>/agg_weight/<task>`` when the aggregator reported its weights;
    - ``diag/loss_ratio/<task>``: L(t) / L(0), and ``diag/weight/<task>``: the loss weight.
    - what the balancer made of the measurement (``measurement_scalars``): the escalation's
      ``diag/escalation/<symptom>`` value, ``_average``, ``_threshold`` and ``_on``.

    L(t) is the mean of ``loss_<task>`` over the iterations since the previous measurement, up to
    and including t; L(0) is that mean at the first measurement, i.e. over the first window of
    training. Window means, not single steps, so that batch noise does not swamp the trend.

    A task is reported as collapsed (a WARNING) when its L(t) over the last ``collapse_window``
    measurements improved by less than ``collapse_tolerance`` (relative, from a least-squares
    fit; see ``collapsed_tasks``) while another task's improved by more.

    L(0), the loss histories and the open window go into checkpoints (``checkpoint
    ['diagnostics']``, plain types) so that a resumed run continues them; the previous update
    signs do not, so the first measurement after a resume has no sign-flip rate.

    Under DDP the gradient record is identical on all ranks; the losses are each rank's own, as
    in mmengine's training log.
    """

    priority = "LOW"  # before CheckpointHook (VERY_LOW): a checkpoint holds its step's window

    def __init__(self, *, collapse_window: int = 10, collapse_tolerance: float = 0.01) -> None:
        if collapse_window < 2:
            raise ValueError(f"collapse_window must be at least 2, got {collapse_window}")
        self.collapse_window = collapse_window
        self.collapse_tolerance = collapse_tolerance
        self._first_loss: dict[str, float] = {}
        self._history: dict[str, list[float]] = {}
        self._window_sum: dict[str, float] = {}
        self._window_count: dict[str, int] = {}
        self._prev_sign: dict[str, Tensor] = {}

    @staticmethod
    def _model(runner) -> nn.Module:
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train(self, runner) -> None:
        if self._model(runner).balancer.measure_interval is None:
            raise ValueError(
                "GradientDiagnosticsHook logs the balancer's gradient measurements, but "
                "model.balancer.measure_interval is not set: set it (e.g. 50) or remove the "
                "hook from custom_hooks"
            )

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        model = self._model(runner)
        for task in model.tasks:
            value = (outputs or {}).get(f"loss_{task}")
            if value is None or not math.isfinite(loss := float(value)):
                continue
            self._window_sum[task] = self._window_sum.get(task, 0.0) + loss
            self._window_count[task] = self._window_count.get(task, 0) + 1
        stats: GradientStats | None = model.balancer.stats
        if stats is None or stats.iter != runner.iter:
            return
        model.balancer.stats = None
        if not model.balancer.measures_at(stats.iter):  # surgery measures at every step: keep
            return  # the loss windows and the collapse check on the measurement interval
        scalars: dict[str, float] = {}
        summary = []
        for name, group in stats.groups.items():
            group_scalars = self._group_scalars(name, group, stats.loss_weights)
            scalars.update(group_scalars)
            summary.append(_group_summary(name, group_scalars))
        ratios = self._close_window()
        scalars.update({f"diag/loss_ratio/{t}": r for t, r in ratios.items()})
        scalars.update({f"diag/weight/{t}": float(w) for t, w in stats.loss_weights.items()})
        scalars.update({f"diag/{k}": v for k, v in model.balancer.measurement_scalars().items()})
        runner.visualizer.add_scalars(scalars, step=runner.iter + 1)
        summary.append("loss ratio " + " ".join(f"{t} {r:.3f}" for t, r in ratios.items()))
        runner.logger.info(f"gradient diagnostics at iter {runner.iter + 1}: " + "; ".join(summary))
        collapsed = collapsed_tasks(
            self._history, window=self.collapse_window, tolerance=self.collapse_tolerance
        )
        if collapsed:
            runner.logger.warning(
                f"gradient diagnostics at iter {runner.iter + 1}: the loss of {collapsed} "
                f"improved by less than {self.collapse_tolerance:.1%} over the last "
                f"{self.collapse_window} measurements while other tasks still improve"
            )

    def _group_scalars(
        self, name: str, group: GroupGradients, loss_weights: dict[str, float]
    ) -> dict[str, float]:
        prefix = f"diag/{name}"
        scalars: dict[str, float] = {}
        norms = task_norms(group.gram).tolist()
        for task, norm in zip(group.tasks, norms, strict=True):
            scalars[f"{prefix}/weighted_grad_norm/{task}"] = norm
            weight = abs(float(loss_weights[task]))
            if weight > 0:  # weighted by 0, the gradient says nothing of the raw one
                scalars[f"{prefix}/grad_norm/{task}"] = norm / weight
        cos = cosine_matrix(group.gram)
        for i, first in enumerate(group.tasks):
            for j in range(i + 1, len(group.tasks)):
                scalars[f"{prefix}/cos/{first}-{group.tasks[j]}"] = cos[i, j].item()
        scalars[f"{prefix}/conflict_rate"] = conflict_rate(group.gram)
        prev = self._prev_sign.get(name)
        if prev is not None:
            scalars[f"{prefix}/sign_flip_rate"] = sign_flip_rate(prev, group.update_sign)
        self._prev_sign[name] = group.update_sign
        if group.aggregator_weights is not None:
            weights = group.aggregator_weights.tolist()
            for task, weight in zip(group.tasks, weights, strict=True):
                scalars[f"{prefix}/agg_weight/{task}"] = float(weight)
        return scalars

    def _close_window(self) -> dict[str, float]:
        """Ends the loss window at a measurement: records each task's mean loss L(t) and
        returns L(t) / L(0) per task that had a finite loss in the window."""
        ratios = {}
        for task, total in self._window_sum.items():
            loss = total / self._window_count[task]
            first = self._first_loss.setdefault(task, loss)
            if first != 0:
                ratios[task] = loss / first
            history = self._history.get(task, []) + [loss]
            self._history[task] = history[-self.collapse_window :]
        self._window_sum.clear()
        self._window_count.clear()
        return ratios

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["diagnostics"] = {
            "first_loss": dict(self._first_loss),
            "history": {task: list(h) for task, h in self._history.items()},
            "window_sum": dict(self._window_sum),
            "window_count": dict(self._window_count),
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get("diagnostics")
        if state is None:
            return
        self._first_loss = dict(state["first_loss"])
        self._history = {task: list(h) for task, h in state["history"].items()}
        self._window_sum = dict(state["window_sum"])
        self._window_count = dict(state["window_count"])
        self._prev_sign.clear()


def _group_summary(name: str, scalars: dict[str, float]) -> str:
    """``det+seg: conflict 0.00, sign flips 0.31, grad norms det 0.12 seg 0.034``."""
    prefix = f"diag/{name}/"
    text = f"{name}: conflict {scalars[prefix + 'conflict_rate']:.2f}"
    if prefix + "sign_flip_rate" in scalars:
        text += f", sign flips {scalars[prefix + 'sign_flip_rate']:.2f}"
    norms = {k.rpartition("/")[2]: v for k, v in scalars.items() if "/grad_norm/" in k}
    return text + ", grad norms " + " ".join(f"{t} {v:.3g}" for t, v in norms.items())
