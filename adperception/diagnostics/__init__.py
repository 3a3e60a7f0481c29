"""Training diagnostics (docs/design.md §6): what the task gradients on shared parameters say,
logged by ``GradientDiagnosticsHook``, and the inter-task affinity of ``AffinityHook``. The
pictures of those logs are in ``adperception.diagnostics.plots`` (not imported here: it needs
matplotlib, training does not)."""

from adperception.balancing.stats import conflict_rate, cosine_matrix, task_norms
from adperception.diagnostics.affinity import AffinityHook, measure_affinity
from adperception.diagnostics.gradients import (
    collapsed_tasks,
    relative_improvement,
    sign_flip_rate,
)
from adperception.diagnostics.hooks import GradientDiagnosticsHook

__all__ = [
    "AffinityHook",
    "GradientDiagnosticsHook",
    "collapsed_tasks",
    "conflict_rate",
    "cosine_matrix",
    "measure_affinity",
    "relative_improvement",
    "sign_flip_rate",
    "task_norms",
]
