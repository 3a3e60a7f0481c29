"""Loss balancing and gradient surgery (DESIGN.md §5).

``model.balancer=dict(type=...)`` picks a weighting (``EqualWeighting``, ``StaticWeighting``,
``UncertaintyWeighting``, ``DWA``, ``GradNorm``, ``TrendWeighting``) or an aggregator
(``PCGrad``, ``CAGrad``, ``IMTLG``, ``MGDA``, ``NashMTL``, each with an optional
``weighting=dict(...)``), or the default ``Escalation``. ``functional`` holds the aggregators as
pure functions of the task-gradient matrix.
"""

from adperception.balancing import functional
from adperception.balancing.balancer import (
    IMTLG,
    MGDA,
    CAGrad,
    GradientBalancer,
    NashMTL,
    PCGrad,
    build_balancer,
)
from adperception.balancing.escalation import Escalation
from adperception.balancing.layout import SharingGroup, SharingLayout, group_name
from adperception.balancing.reference import PCGradReference
from adperception.balancing.stats import GradientStats, GroupGradients
from adperception.balancing.weighting import (
    DWA,
    EqualWeighting,
    GradNorm,
    StaticWeighting,
    TrendWeighting,
    UncertaintyWeighting,
    Weighting,
)

__all__ = [
    "CAGrad",
    "DWA",
    "EqualWeighting",
    "Escalation",
    "GradNorm",
    "GradientBalancer",
    "GradientStats",
    "GroupGradients",
    "IMTLG",
    "MGDA",
    "NashMTL",
    "PCGrad",
    "PCGradReference",
    "SharingGroup",
    "SharingLayout",
    "StaticWeighting",
    "TrendWeighting",
    "UncertaintyWeighting",
    "Weighting",
    "build_balancer",
    "functional",
    "group_name",
]
