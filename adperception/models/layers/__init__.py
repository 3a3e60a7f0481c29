"""Reusable building blocks shared by the model parts: adapters (bottleneck, LoRA, generated
by a hypernetwork), cross-stitch / sluice mixing, MTAN task attention, task-specific norms."""

from adperception.models.layers.adapters import (
    ADAPTER_TYPES,
    AdaptedBlock,
    BottleneckAdapter,
    LoRALinear,
    adapter_parameters,
    add_adapters,
    add_bottleneck_adapters,
    inject_lora,
)
from adperception.models.layers.cross_stitch import CrossStitch
from adperception.models.layers.hyper_adapters import AdapterHypernetwork, HyperAdaptedBlock
from adperception.models.layers.task_attention import TaskAttention
from adperception.models.layers.task_norm import TaskSpecificNorm, add_task_norms

__all__ = [
    "ADAPTER_TYPES",
    "AdaptedBlock",
    "AdapterHypernetwork",
    "BottleneckAdapter",
    "CrossStitch",
    "HyperAdaptedBlock",
    "LoRALinear",
    "TaskAttention",
    "TaskSpecificNorm",
    "adapter_parameters",
    "add_adapters",
    "add_bottleneck_adapters",
    "add_task_norms",
    "inject_lora",
]
