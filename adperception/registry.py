"""The project's registries, children of mmengine's so that configs resolve in the
``adperception`` scope first and fall back to mmengine/mmdet/mmseg objects by prefix
(``mmdet.FPN``). Configs set ``default_scope = "adperception"``.

- ``DATASETS``: mmengine ``BaseDataset`` subclasses; ``get_raw_sample(idx)`` returns the decoded
  sample of the data contract (docs/design.md §3) and ``__getitem__`` runs the pipeline on it.
- ``TRANSFORMS``: callables ``dict -> dict | None`` over that sample; every geometric transform
  keeps all targets (maps, boxes, normals, metric depth) consistent with the image.
- ``MODELS``: backbones (``forward(x) -> {group: [NCHW maps at strides 4, 8, 16, 32]}``), task
  heads (``loss(feats, data_samples) -> {name: loss}``, ``predict(feats, data_samples)`` filling
  ``pred_*`` fields, ``forward(feats)`` -> raw tensors) and the multi-task model.
- ``METRICS``: mmengine ``BaseMetric`` subclasses over packed ``MTLDataSample`` predictions.
- ``BALANCERS``: loss weightings and gradient aggregators (``model.balancer=dict(type=...)``),
  built by ``adperception.balancing.build_balancer``.
- ``TASKS``: one ``adperception.tasks.Task`` per task, registered under the task's name
  (``det``, ``seg``, ...): everything the data, model, metric, export and pictures need to know
  about it.
- ``MODEL_WRAPPERS``: the DDP wrapper whose train step runs the balancer.
- ``HOOKS``, ``OPTIM_WRAPPERS``, ``OPTIM_WRAPPER_CONSTRUCTORS``, ``RUNNERS``, ``LOOPS``: training
  glue in ``adperception.engine``.
"""

from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import Registry

DATASETS = Registry(
    "dataset", parent=MMENGINE_DATASETS, scope="adperception", locations=["adperception.data"]
)
TRANSFORMS = Registry(
    "transform", parent=MMENGINE_TRANSFORMS, scope="adperception", locations=["adperception.data"]
)
MODELS = Registry(
    "model", parent=MMENGINE_MODELS, scope="adperception", locations=["adperception.models"]
)
METRICS = Registry(
    "metric", parent=MMENGINE_METRICS, scope="adperception", locations=["adperception.evaluation"]
)
TASKS = Registry("task", scope="adperception", locations=["adperception.tasks"])
BALANCERS = Registry("balancer", scope="adperception", locations=["adperception.balancing"])
MODEL_WRAPPERS = Registry(
    "model_wrapper",
    parent=MMENGINE_MODEL_WRAPPERS,
    scope="adperception",
    locations=["adperception.engine"],
)
HOOKS = Registry(
    "hook",
    parent=MMENGINE_HOOKS,
    scope="adperception",
    locations=["adperception.engine", "adperception.diagnostics"],
)
OPTIM_WRAPPERS = Registry(
    "optim_wrapper",
    parent=MMENGINE_OPTIM_WRAPPERS,
    scope="adperception",
    locations=["adperception.engine"],
)
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    "optimizer wrapper constructor",
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope="adperception",
    locations=["adperception.engine"],
)
RUNNERS = Registry(
    "runner", parent=MMENGINE_RUNNERS, scope="adperception", locations=["adperception.engine"]
)
LOOPS = Registry(
    "loop", parent=MMENGINE_LOOPS, scope="adperception", locations=["adperception.engine"]
)
# No project classes yet: they let configs in our scope reach mmengine's visualizers quietly.
VISUALIZERS = Registry("visualizer", parent=MMENGINE_VISUALIZERS, scope="adperception")
VISBACKENDS = Registry("vis_backend", parent=MMENGINE_VISBACKENDS, scope="adperception")
