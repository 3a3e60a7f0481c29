"""The project's registries, children of mmengine's so that configs resolve in the
``adperception`` scope first and fall back to mmengine/mmdet/mmseg objects by prefix.

- ``DATASETS``: mmengine ``BaseDataset`` subclasses; ``get_raw_sample(idx)`` returns the decoded
  sample of the data contract (DESIGN.md §3) and ``__getitem__`` runs the pipeline on it.
- ``TRANSFORMS``: callables ``dict -> dict | None`` over that sample; every geometric transform
  keeps all targets (maps, boxes, normals, metric depth) consistent with the image.
"""

from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

DATASETS = Registry(
    "dataset", parent=MMENGINE_DATASETS, scope="adperception", locations=["adperception.data"]
)
TRANSFORMS = Registry(
    "transform", parent=MMENGINE_TRANSFORMS, scope="adperception", locations=["adperception.data"]
)
