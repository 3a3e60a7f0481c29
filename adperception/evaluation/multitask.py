"""One metric for every task the samples carry, each measured and summed up by its task
(``adperception.tasks``): COCO box AP through mmdet's ``CocoMetric``, mIoU through mmseg's
``IoUMetric`` area functions, our depth and normals statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmengine.evaluator import BaseMetric
from mmengine.structures import BaseDataElement

from adperception.registry import METRICS
from adperception.tasks.base import get_task, task_names, tasks_in_order


@METRICS.register_module()
class MultiTaskMetric(BaseMetric):
    """Evaluates each of ``tasks`` on the samples labelled for it; unlabelled samples do not
    count (a task no sample is labelled for is left out).

    Keys are ``<task>/<metric>``: ``det/mAP``, ``det/mAP_50`` (COCO box AP over IoU 0.50:0.95
    and at 0.50), ``seg/mIoU``, ``seg/aAcc``, ``depth/abs_err``, ``depth/rmse`` (metres),
    ``depth/abs_rel`` (fraction), ``depth/delta1``, ``normals/mean``, ``normals/median``
    (degrees), ``normals/within_11.25``, ``normals/within_22.5``, ``normals/within_30``, and the
    keys of any other registered task. Every share is in percent (0-100); mAP has mmdet's
    resolution of 0.1 points. Dense tasks count every valid pixel of the dataset once
    (pixel-weighted, as the MTL literature's NYUv2 evaluations do); mIoU averages the classes
    present in targets or predictions. A metric without any valid pixel or box is NaN. Depth
    compares ``pred_depth`` and ``gt_depth`` as they come, which the test pipeline and
    ``DepthHead.predict`` put at ``ori_shape`` in the original image's metres.

    Args:
        tasks: the tasks to evaluate, each of which a sample labelled for it must also predict;
            by default, every registered task that the samples both label and predict.
        **options: the tasks' options (``Task.metric_options``): ``<task>_classes`` (class
            names indexed by label; default the dataset_meta's names of that task, e.g.
            ``det_classes``, ``classes``), ``min_depth``, ``max_depth`` (depth targets outside
            (min_depth, max_depth) metres are ignored, as the depth literature caps its
            evaluations: 80 m driving, 10 m NYUv2).
    """

    default_prefix: str | None = None

    def __init__(
        self,
        *,
        tasks: Sequence[str] | None = None,
        collect_device: str = "cpu",
        prefix: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        # Named tasks must be predicted wherever labelled; by default, every task the model
        # predicts is evaluated (a dataset may label more tasks than the model has heads).
        self.named = tasks is not None
        try:
            self.tasks = task_names() if tasks is None else tasks_in_order(tasks)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        known = {key for task in map(get_task, task_names()) for key in task.metric_options}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"MultiTaskMetric: unknown option(s) {unknown}; the registered tasks' options "
                f"are {sorted(known)}"
            )
        self.options = options
        for name in self.tasks:
            get_task(name).check_options(self.task_options(name))

    def task_options(self, name: str) -> dict[str, Any]:
        """``name``'s options: its defaults, overridden by the given ones; ``classes`` resolved
        from the dataset_meta when not given."""
        task = get_task(name)
        resolved = {
            key: self.options.get(key, default) for key, default in task.metric_options.items()
        }
        class_option = f"{name}_classes"
        if class_option in resolved:
            resolved["classes"] = resolved.pop(class_option)
        return resolved

    def _classes(self, name: str) -> tuple[str, ...]:
        given = self.task_options(name).get("classes")
        if given is not None:
            return tuple(given)
        task = get_task(name)
        names = task.classes(self.dataset_meta or {})
        if not names:
            raise ValueError(
                f"{name} class names: pass {name}_classes or set dataset_meta['{task.class_key}']"
            )
        return names

    def _resolved(self, name: str) -> dict[str, Any]:
        options = self.task_options(name)
        if get_task(name).class_key is not None:
            options["classes"] = self._classes(name)
        return options

    def process(self, data_batch: Any, data_samples: Sequence[Mapping | BaseDataElement]) -> None:
        """Keep one small record per sample: ``{task: per-image record}`` for its tasks."""
        resolved: dict[str, dict] = {}  # only for the tasks labelled: others need no classes
        for sample in data_samples:
            if isinstance(sample, BaseDataElement):
                sample = sample.to_dict()
            record = {}
            for name in self.tasks:
                task = get_task(name)
                if task.gt_field not in sample or (
                    not self.named and task.pred_field not in sample
                ):
                    continue
                if task.pred_field not in sample:
                    raise KeyError(
                        f"sample has {task.gt_field} but no {task.pred_field} to evaluate"
                    )
                if name not in resolved:
                    resolved[name] = self._resolved(name)
                record[name] = task.measure(
                    sample[task.pred_field], sample[task.gt_field], sample, resolved[name]
                )
            self.results.append(record)

    def compute_metrics(self, results: list[dict[str, Any]]) -> dict[str, float]:
        metrics = {}
        for name in self.tasks:
            per_image = [record[name] for record in results if name in record]
            if per_image:
                summary = get_task(name).summarize(per_image, self._resolved(name))
                metrics.update({f"{name}/{key}": value for key, value in summary.items()})
        return metrics
