"""The task registry: one module per task (docs/design.md §3); importing this package registers
them, in the order the tools list them (so the imports are not sorted)."""

# ruff: noqa: I001

from adperception.tasks.base import MapTask, Task, get_task, task_names, tasks_in_order
from adperception.tasks.det import Detection
from adperception.tasks.seg import Segmentation
from adperception.tasks.depth import Depth
from adperception.tasks.normals import Normals
from adperception.tasks.drivable import DrivableArea
from adperception.tasks.lanes import LaneMarking

__all__ = [
    "Depth",
    "Detection",
    "DrivableArea",
    "LaneMarking",
    "MapTask",
    "Normals",
    "Segmentation",
    "Task",
    "get_task",
    "task_names",
    "tasks_in_order",
]
