"""adperception: one network for detection, segmentation, depth and surface normals."""

__version__ = "0.1.0"
