"""What the rest of the code needs to know about one task, declared once (docs/design.md §3).

A task is one module under ``adperception/tasks/`` with one ``Task`` subclass registered in
``TASKS``. It declares its raw-sample keys, what padding and geometry do to its target, how the
target is packed into an ``MTLDataSample`` field, its metrics with their directions, its ONNX
outputs and their post-processing, and how it is drawn. The transforms, the model, the metric,
the exporter and the pictures read these declarations; none of them names a task.

The tasks of a run are the heads its config names; ``task_names()`` only fixes the order in
which the tools list them (the order of registration).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.structures import BaseDataElement, PixelData
from torch import Tensor

from adperception.registry import TASKS


@dataclass(frozen=True)
class LayoutFile:
    """A task's file per sample in the Cityscapes layout, beside the official ones:
    ``{root}/{folder}/{split}/{city}/{stem}{suffix}``; ``read(path, image_shape)`` decodes it
    into the task's raw target (``DataFileError`` naming the file when it is malformed)."""

    key: str
    folder: str
    suffix: str
    read: Callable[[str, tuple[int, int] | None], np.ndarray]


class Task:
    """One task's declarations; subclasses set the class attributes and override the hooks.

    Attributes:
        name: the task's key in configs (``model.heads.<name>``), logs (``<name>/<metric>``) and
            losses (``loss_<name>``).
        gt_field, pred_field: its target and prediction fields of an ``MTLDataSample``.
        raw_keys: its keys in the raw sample (docs/design.md §3); the first one says whether a
            sample carries the task.
        primary_metrics: the metrics Δm averages, each with +1 where higher is better, -1 where
            lower is.
        metric_options: keyword options of ``MultiTaskMetric`` this task reads, with defaults.
        outputs: ONNX output name → what it holds (B images, Q queries, K/C classes).
        class_key: the dataset ``metainfo`` key of its class names, or ``None``; a head's
            ``num_classes`` must match their count.
        default_classes: its class names where a dataset's ``metainfo`` has none.
        default_group: the backbone branch group it joins by default.
        element_type: the data element of its target and prediction fields.
        default_head: the head a config gets for ``model.heads.<name>`` when it names no
            ``type`` (its keys are the defaults, the config's override them); ``None`` for a
            task whose head needs a full config (the detector).
        layout_files: its files in the Cityscapes layout, for the tasks that layout lacks (the
            Cityscapes reader, the checker and the SynthDrive writer read them from here).
    """

    name: ClassVar[str]
    gt_field: ClassVar[str]
    pred_field: ClassVar[str]
    raw_keys: ClassVar[tuple[str, ...]]
    primary_metrics: ClassVar[dict[str, int]]
    metric_options: ClassVar[dict[str, Any]] = {}
    outputs: ClassVar[dict[str, str]]
    class_key: ClassVar[str | None] = None
    default_classes: ClassVar[tuple[str, ...]] = ()
    default_group: ClassVar[str]
    element_type: ClassVar[type[BaseDataElement]]
    layout_files: ClassVar[tuple[LayoutFile, ...]] = ()
    default_head: ClassVar[dict | None] = None

    # --- the raw sample --------------------------------------------------------------------
    def in_sample(self, results: Mapping) -> bool:
        return self.raw_keys[0] in results

    def check(self, results: Mapping, shape: tuple[int, int], where: str) -> None:
        """Raise ``ValueError`` naming ``where`` when the target disagrees with the image."""

    def after_flip(self, results: dict) -> None:
        """The physics of a horizontal flip beyond moving pixels (e.g. normals' x negated)."""

    def after_zoom(self, results: dict, zoom: float) -> None:
        """The physics of a uniform zoom by ``zoom`` beyond resampling (e.g. depth / zoom)."""

    def keep_original(self, results: dict) -> None:
        """Before the test ``Resize``: keep what evaluation needs at the original size."""

    def pack(self, results: Mapping) -> BaseDataElement:
        """The ``gt_field`` element of a sample that ``in_sample``."""
        raise NotImplementedError

    def unpack(self, element: BaseDataElement, *, score_thr: float = 0.0) -> dict[str, np.ndarray]:
        """The raw-sample keys of a packed target or prediction (for drawing); predictions
        scoring below ``score_thr`` are left out."""
        raise NotImplementedError

    def probe_target(self, size: int, device: torch.device) -> BaseDataElement:
        """A valid target of a ``size``×``size`` image, on which the loss depends on every head
        parameter (used to trace which parameters serve which task)."""
        raise NotImplementedError

    # --- evaluation --------------------------------------------------------------------------
    def check_options(self, options: Mapping) -> None:
        """Raise ``ValueError`` for metric options that cannot be right."""

    def measure(self, pred: Mapping, gt: Mapping, sample: Mapping, options: Mapping) -> Any:
        """The small per-image record that ``summarize`` sums up."""
        raise NotImplementedError

    def summarize(self, records: list, options: Mapping) -> dict[str, float]:
        """The task's metrics (``{metric: value}``, without the ``<task>/`` prefix)."""
        raise NotImplementedError

    # --- export ------------------------------------------------------------------------------
    def export_forward(
        self, head: torch.nn.Module, feats: list[Tensor], img_shapes: Tensor, size: Sequence[int]
    ) -> tuple[Tensor, ...]:
        """The head's raw outputs, one per ``outputs`` entry in order, from tensors alone."""
        return (head(feats),)

    def export_meta(self, head: torch.nn.Module) -> dict | None:
        """What post-processing needs from the head, stored in the export's ``meta.json``."""
        return None

    def postprocess(self, raw: Mapping[str, Tensor], prepared: Any, meta: Mapping) -> dict:
        """Results at the original image size from one image's raw ``outputs``."""
        raise NotImplementedError

    def result_to_sample(self, result: Mapping, *, score_thr: float) -> dict[str, np.ndarray]:
        """The raw-sample keys of a ``postprocess`` result (for drawing)."""
        raise NotImplementedError

    # --- pictures ----------------------------------------------------------------------------
    def draw(self, img: np.ndarray, sample: Mapping, metainfo: Mapping, style: Any) -> np.ndarray:
        """An image-sized uint8 RGB tile of the task's target over ``img``."""
        raise NotImplementedError

    def classes(self, metainfo: Mapping) -> tuple[str, ...]:
        """Its class names from a dataset's ``metainfo``, else the task's own fixed ones
        (``default_classes``, for tasks whose classes a format defines); may be empty."""
        if self.class_key and metainfo.get(self.class_key):
            return tuple(metainfo[self.class_key])
        return self.default_classes


class MapTask(Task):
    """A dense target: one H×W(×C) map under ``map_key``, resized with nearest neighbours,
    padded with ``pad_value`` (which the loss and the metric ignore) and packed C×H×W."""

    map_key: ClassVar[str]
    channels: ClassVar[int] = 1
    dtype: ClassVar[type[np.generic]] = np.float32
    pad_value: ClassVar[float] = 0.0
    element_type = PixelData

    @property
    def raw_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.map_key,)

    def check(self, results: Mapping, shape: tuple[int, int], where: str) -> None:
        found = results[self.map_key].shape[:2]
        if tuple(found) != tuple(shape):
            raise ValueError(f"{where}: {self.map_key} is {found} but the image is {shape}")

    def pack(self, results: Mapping) -> PixelData:
        return PixelData(data=chw(results[self.map_key], self.dtype))

    def unpack(self, element: BaseDataElement, *, score_thr: float = 0.0) -> dict[str, np.ndarray]:
        array = element.data.detach().cpu().numpy()
        array = array[0] if self.channels == 1 else array.transpose(1, 2, 0)
        return {self.map_key: np.ascontiguousarray(array)}

    def postprocess_map(self, output: Tensor, prepared: Any) -> Tensor:
        """C×h4×w4 output → C×H×W at the original size: upsampled to the padded input, cropped
        to the resized image and resized bilinearly to the original."""
        padded = upsample(output[None].float(), prepared.batch.shape[-2:])
        height, width = prepared.resized_shape
        crop = padded[..., :height, :width]
        shape = prepared.image.shape[:2]
        return (crop if crop.shape[-2:] == shape else upsample(crop, shape))[0]


def upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of an NCHW map (align_corners=False, as mmseg's heads and ``predict``)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def chw(array: np.ndarray, dtype: type[np.generic]) -> Tensor:
    """H×W or H×W×C array → contiguous C×H×W tensor of ``dtype``."""
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))


def get_task(name: str) -> Task:
    """The registered task ``name``; ``KeyError`` listing the known ones otherwise."""
    TASKS.import_from_location()
    cls = TASKS.module_dict.get(name) if isinstance(name, str) else None
    if cls is None:
        raise KeyError(f"unknown task {name!r}; registered tasks are {', '.join(task_names())}")
    return _instance(cls)


def task_names() -> tuple[str, ...]:
    """Every registered task, in registration order (the order tools list them in)."""
    TASKS.import_from_location()
    return tuple(TASKS.module_dict)


def tasks_in_order(names: Sequence[str] | Mapping[str, Any]) -> tuple[str, ...]:
    """``names`` (e.g. a config's heads) in registration order; unknown ones raise."""
    for name in names:
        get_task(name)
    return tuple(name for name in task_names() if name in names)


def layout_files() -> dict[str, tuple[Task, LayoutFile]]:
    """Every registered task's Cityscapes-layout files: path key → (task, file)."""
    return {
        file.key: (task, file) for task in map(get_task, task_names()) for file in task.layout_files
    }


def default_branches() -> dict[str, tuple[str, ...]]:
    """Backbone branch group → the registered tasks that join it by default
    (``Task.default_group``): the groups of ``BranchedBackbone(branches=None)``."""
    groups: dict[str, tuple[str, ...]] = {}
    for task in map(get_task, task_names()):
        groups[task.default_group] = (*groups.get(task.default_group, ()), task.name)
    return groups


_INSTANCES: dict[type, Task] = {}


def _instance(cls: type) -> Task:
    if cls not in _INSTANCES:
        _INSTANCES[cls] = cls()
    return _INSTANCES[cls]
