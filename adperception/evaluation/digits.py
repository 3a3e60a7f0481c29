"""Per-task classification accuracy for the digits experiment (``DigitsMTLNet`` predictions)."""

from __future__ import annotations

from collections.abc import Sequence

from mmengine.evaluator import BaseMetric

from adperception.registry import METRICS


@METRICS.register_module()
class DigitsAccuracy(BaseMetric):
    """Accuracy in percent (0-100) per task: ``digit/accuracy``, ``parity/accuracy``.

    Reads each prediction's ``pred_<task>`` and ``gt_<task>`` (what ``DigitsMTLNet.predict``
    returns) for every task in ``tasks``.
    """

    default_prefix: str | None = None

    def __init__(
        self,
        *,
        tasks: Sequence[str] = ("digit", "parity"),
        collect_device: str = "cpu",
        prefix: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.tasks = tuple(tasks)

    def process(self, data_batch, data_samples: Sequence[dict[str, int]]) -> None:
        for sample in data_samples:
            self.results.append({t: sample[f"pred_{t}"] == sample[f"gt_{t}"] for t in self.tasks})

    def compute_metrics(self, results: list[dict[str, bool]]) -> dict[str, float]:
        return {
            f"{task}/accuracy": 100.0 * sum(r[task] for r in results) / len(results)
            for task in self.tasks
        }
