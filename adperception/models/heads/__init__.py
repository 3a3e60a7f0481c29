"""Task heads: detection (mmdet DETR family), segmentation (mmseg), depth, normals."""

from adperception.models.heads.depth import DepthHead
from adperception.models.heads.detection import DetectionHead
from adperception.models.heads.hybrid_dino import HybridDINO
from adperception.models.heads.normals import NormalsHead
from adperception.models.heads.segmentation import SegmentationHead

__all__ = ["DepthHead", "DetectionHead", "HybridDINO", "NormalsHead", "SegmentationHead"]
