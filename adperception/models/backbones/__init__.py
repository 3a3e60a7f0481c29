"""Backbones: timm ConvNeXt / Swin / EfficientNet with shared early stages, per-group branches
and adapters."""

from adperception.models.backbones.branched import BranchedBackbone, load_timm_weights

__all__ = ["BranchedBackbone", "load_timm_weights"]
