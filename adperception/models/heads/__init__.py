"""Task heads: detection (mmdet DETR family), segmentation (mmseg), depth, normals; FPN heads
for the partially shared network, query decoders for the multi-decoder transformer."""

from adperception.models.heads.depth import DepthHead, DepthHeadBase
from adperception.models.heads.detection import DetectionHead
from adperception.models.heads.hybrid_dino import HybridDINO
from adperception.models.heads.mask_classification import MaskClassificationHead
from adperception.models.heads.matching import FiniteHungarianAssigner
from adperception.models.heads.memory_dino import MemoryDINO
from adperception.models.heads.normals import NormalsHead, NormalsHeadBase
from adperception.models.heads.query_dense import AdaptiveBinsDepthHead, QueryNormalsHead
from adperception.models.heads.segmentation import SegmentationHead

__all__ = [
    "AdaptiveBinsDepthHead",
    "DepthHead",
    "DepthHeadBase",
    "DetectionHead",
    "FiniteHungarianAssigner",
    "HybridDINO",
    "MaskClassificationHead",
    "MemoryDINO",
    "NormalsHead",
    "NormalsHeadBase",
    "QueryNormalsHead",
    "SegmentationHead",
]
