"""Reusable building blocks shared by the model parts (adapters)."""

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

__all__ = [
    "ADAPTER_TYPES",
    "AdaptedBlock",
    "BottleneckAdapter",
    "LoRALinear",
    "adapter_parameters",
    "add_adapters",
    "add_bottleneck_adapters",
    "inject_lora",
]
