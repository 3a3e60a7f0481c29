"""The per-image data sample that carries every task's targets and predictions to the model.

Field names follow mmdet's ``DetDataSample`` (``gt_instances``) and mmseg's ``SegDataSample``
(``gt_sem_seg``), so their heads consume an ``MTLDataSample`` unchanged.
"""

from __future__ import annotations

from typing import Any

from mmengine.structures import BaseDataElement, InstanceData, PixelData


def _typed_field(name: str, dtype: type[BaseDataElement], doc: str) -> property:
    """A property stored as ``_name`` through ``set_field`` with a type check, as mmdet does.

    It must be a ``property``: ``BaseDataElement.keys()`` recognises private backing fields
    by that type.
    """
    private = f"_{name}"

    def fget(self: BaseDataElement) -> Any:
        return getattr(self, private)

    def fset(self: BaseDataElement, value: Any) -> None:
        self.set_field(value, private, dtype=dtype)

    def fdel(self: BaseDataElement) -> None:
        delattr(self, private)

    return property(fget, fset, fdel, doc)


class MTLDataSample(BaseDataElement):
    """Targets and predictions of one image for detection, segmentation, depth and normals.

    Metainfo: ``img_path``, ``sample_idx``, ``ori_shape``, ``img_shape``, ``pad_shape``,
    ``scale_factor`` (w_scale, h_scale), ``flip``, ``flip_direction``. A field is absent when
    the dataset does not provide that task.
    """

    gt_instances = _typed_field(
        "gt_instances", InstanceData, "InstanceData: bboxes float32 N×4 xyxy px, labels int64 N."
    )
    gt_sem_seg = _typed_field(
        "gt_sem_seg", PixelData, "PixelData: data int64 1×H×W train ids, 255 = ignore."
    )
    gt_depth = _typed_field(
        "gt_depth", PixelData, "PixelData: data float32 1×H×W metres, 0 = invalid."
    )
    gt_normals = _typed_field(
        "gt_normals", PixelData, "PixelData: data float32 3×H×W unit camera-frame normals."
    )
    pred_instances = _typed_field(
        "pred_instances", InstanceData, "InstanceData: bboxes, scores, labels."
    )
    pred_sem_seg = _typed_field("pred_sem_seg", PixelData, "PixelData: data 1×H×W class ids.")
    pred_depth = _typed_field("pred_depth", PixelData, "PixelData: data 1×H×W metres.")
    pred_normals = _typed_field("pred_normals", PixelData, "PixelData: data 3×H×W unit normals.")
