"""Metrics of every task, computed from packed predictions and targets."""

from adperception.evaluation.depth import depth_sums, summarize_depth
from adperception.evaluation.digits import DigitsAccuracy
from adperception.evaluation.multitask import MultiTaskMetric
from adperception.evaluation.normals import angular_errors, normals_stats, summarize_normals

__all__ = [
    "DigitsAccuracy",
    "MultiTaskMetric",
    "angular_errors",
    "depth_sums",
    "normals_stats",
    "summarize_depth",
    "summarize_normals",
]
