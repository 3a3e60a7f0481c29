"""The deployment module: a thin wrapper over the training model with fixed tensor outputs.

``InferenceModel(batch, img_shapes)`` takes a normalised float batch B×3×H×W (H, W multiples of
32), each image padded bottom/right, and the B×2 int64 (h, w) of each image in it (mmdet's
``img_shape``); it returns ``{name: tensor}`` with exactly the names of ``output_specs`` for the
tasks the model has, in that order. These are also the ONNX graph's input and output names. The
detector masks each image's padding from ``img_shapes`` as training and ``predict`` do
(``Task.export_forward``); no data samples.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from adperception.models.multitask import MultiTaskModel
from adperception.tasks.base import get_task, tasks_in_order


def output_specs(tasks: Sequence[str]) -> dict[str, str]:
    """Output name → what it holds, for a model with ``tasks``, in the order it returns them:
    each task's ``Task.outputs`` (Q queries, K classes, C classes), tasks in registration order."""
    return {
        name: spec
        for task in map(get_task, tasks_in_order(tasks))
        for name, spec in task.outputs.items()
    }


def output_names(tasks: Sequence[str]) -> list[str]:
    """The output names a model with ``tasks`` returns, in order."""
    return list(output_specs(tasks))


class InferenceModel(nn.Module):
    """Raw head outputs of a ``MultiTaskModel`` under fixed names (see ``output_specs``).

    ``meta`` carries what ``inference`` needs around the network: class names, normalisation
    and the size policy, as written by ``adperception.export.checkpoint``.
    """

    def __init__(self, model: MultiTaskModel, meta: dict) -> None:
        super().__init__()
        self.model = model
        self.meta = meta
        self.output_names = output_names(model.tasks)

    def forward(self, batch: Tensor, img_shapes: Tensor) -> dict[str, Tensor]:
        feats = self.model.extract_feat(batch)
        outputs: dict[str, Tensor] = {}
        for name, head in self.model.heads.items():
            task = get_task(name)
            group = feats[self.model.task_groups[name]]
            values = task.export_forward(head, group, img_shapes, batch.shape[-2:])
            outputs.update(zip(task.outputs, values, strict=True))
        return {name: outputs[name] for name in self.output_names}
