"""The per-image data sample that carries every task's targets and predictions to the model.

Each task names its two fields (``Task.gt_field``, ``Task.pred_field`` in ``adperception.tasks``);
the names follow mmdet's ``DetDataSample`` (``gt_instances``) and mmseg's ``SegDataSample``
(``gt_sem_seg``), so their heads consume an ``MTLDataSample`` unchanged.
"""

from __future__ import annotations

from typing import Any

from mmengine.structures import BaseDataElement

from adperception.tasks.base import get_task, task_names


class MTLDataSample(BaseDataElement):
    """Targets and predictions of one image, one data field per task the image has.

    Metainfo: ``img_path``, ``sample_idx``, ``ori_shape``, ``img_shape``, ``pad_shape``,
    ``scale_factor`` (w_scale, h_scale), ``flip``, ``flip_direction``. A task's field is absent
    when the image has no label for it (its dataset lacks the task, or this sample does). A task
    field only takes its task's element type (``Task.element_type``), as mmdet's typed fields.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        expected = _field_types().get(name)
        if expected is None:
            super().__setattr__(name, value)
        else:
            self.set_field(value, name, dtype=expected)


def _field_types() -> dict[str, type[BaseDataElement]]:
    """Every registered task's gt and pred field → its element type."""
    types = {}
    for task in map(get_task, task_names()):
        types[task.gt_field] = types[task.pred_field] = task.element_type
    return types
