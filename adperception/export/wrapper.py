"""The deployment module: a thin wrapper over the training model with fixed tensor outputs.

``InferenceModel(batch, img_shapes)`` takes a normalised float batch B×3×H×W (H, W multiples of
32), each image padded bottom/right, and the B×2 int64 (h, w) of each image in it (mmdet's
``img_shape``); it returns ``{name: tensor}`` with exactly the names of ``OUTPUT_SPECS`` for the
tasks the model has, in that order. These are also the ONNX graph's input and output names. The
detector masks each image's padding from ``img_shapes`` as training and ``predict`` do; no data
samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from adperception.models.multitask import MultiTaskModel

#: Output name → (task, what it holds); shapes use Q queries, K classes, C seg classes.
OUTPUT_SPECS: dict[str, tuple[str, str]] = {
    "det_logits": ("det", "B×Q×K class logits (K + 1 with background for softmax DETR)"),
    "det_boxes": ("det", "B×Q×4 boxes, normalised (cx, cy, w, h) in [0, 1]"),
    "seg_logits": ("seg", "B×C×H/4×W/4 class logits"),
    "depth": ("depth", "B×1×H/4×W/4 metric depth in metres (> 0)"),
    "normals": ("normals", "B×3×H/4×W/4 unit normals (x right, y down, z forward)"),
}


def padding_mask(img_shapes: Tensor, size: Sequence[int]) -> Tensor:
    """B×H×W bool, True outside each image's top-left (h, w) = row of ``img_shapes`` in a batch
    of ``size`` (H, W): the mask mmdet's DETRs build from ``img_shape``, from tensors alone."""
    rows = torch.arange(size[0], device=img_shapes.device)[None, :, None]
    cols = torch.arange(size[1], device=img_shapes.device)[None, None, :]
    return (rows >= img_shapes[:, 0, None, None]) | (cols >= img_shapes[:, 1, None, None])


def output_names(tasks: tuple[str, ...] | list[str]) -> list[str]:
    """The output names a model with ``tasks`` returns, in ``OUTPUT_SPECS`` order."""
    return [name for name, (task, _) in OUTPUT_SPECS.items() if task in tasks]


class InferenceModel(nn.Module):
    """Raw head outputs of a ``MultiTaskModel`` under fixed names (see ``OUTPUT_SPECS``).

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
        for task, head in self.model.heads.items():
            group = feats[self.model.task_groups[task]]
            if task == "det":
                mask = padding_mask(img_shapes, batch.shape[-2:])
                outputs["det_logits"], outputs["det_boxes"] = head(group, mask)
            elif task == "seg":
                outputs["seg_logits"] = head(group)
            else:
                outputs[task] = head(group)
        return {name: outputs[name] for name in self.output_names}
