"""Backbones: timm ConvNeXt / Swin / EfficientNet with shared early stages and per-group
branches (hard sharing, adapters, task-specific norms), cross-stitch / sluice mixing between the
branches (soft sharing) and MTAN task attention over a fully shared backbone."""

from adperception.models.backbones.branched import BranchedBackbone, load_timm_weights
from adperception.models.backbones.cross_stitch import CrossStitchBackbone
from adperception.models.backbones.task_attention import TaskAttentionBackbone

__all__ = ["BranchedBackbone", "CrossStitchBackbone", "TaskAttentionBackbone", "load_timm_weights"]
