"""Loss balancing and gradient surgery (docs/design.md §5).

``model.balancer=dict(type=...)`` picks a weighting (``EqualWeighting``, ``StaticWeighting``,
``UncertaintyWeighting``, ``DWA``, ``GradNorm``, ``TrendWeighting``, ``FAMO``, ``RLW``,
``LogLossWeighting``) or an aggregator (``PCGrad``, ``CAGrad``, ``IMTLG``, ``MGDA``,
``NashMTL``, ``FairGrad``, ``AlignedMTL``, each with an optional ``weighting=dict(...)``), or
the default ``Escalation``. By concept: ``functional`` holds the aggregators as pure functions
of the Gram matrix, ``aggregators`` the balancers a config names for them, ``weighting`` the
loss weightings, ``balancer`` the step driver, ``task_gradients`` the per-task gradient engine,
``layout`` the sharing groups, ``stats`` what a step measured.
"""

from adperception.balancing import functional
from adperception.balancing.aggregators import (
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    FairGrad,
    NashMTL,
    PCGrad,
)
from adperception.balancing.balancer import (
    REGULARISER_PREFIX,
    STEP_KINDS,
    GradientBalancer,
    build_balancer,
    regularisers_of,
)
from adperception.balancing.escalation import Escalation
from adperception.balancing.layout import SharingGroup, SharingLayout, group_name
from adperception.balancing.reference import PCGradReference
from adperception.balancing.stats import GradientStats, GroupGradients, conflict_rate
from adperception.balancing.weighting import (
    DWA,
    FAMO,
    RLW,
    EqualWeighting,
    GradNorm,
    LogLossWeighting,
    StaticWeighting,
    TrendWeighting,
    UncertaintyWeighting,
    Weighting,
)

__all__ = [
    "AlignedMTL",
    "CAGrad",
    "DWA",
    "EqualWeighting",
    "Escalation",
    "FAMO",
    "FairGrad",
    "GradNorm",
    "GradientBalancer",
    "GradientStats",
    "GroupGradients",
    "IMTLG",
    "LogLossWeighting",
    "MGDA",
    "NashMTL",
    "PCGrad",
    "PCGradReference",
    "REGULARISER_PREFIX",
    "RLW",
    "STEP_KINDS",
    "SharingGroup",
    "SharingLayout",
    "StaticWeighting",
    "TrendWeighting",
    "UncertaintyWeighting",
    "Weighting",
    "build_balancer",
    "conflict_rate",
    "functional",
    "group_name",
    "regularisers_of",
]
