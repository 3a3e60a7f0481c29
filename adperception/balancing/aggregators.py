"""The gradient-surgery balancers a config names: one factory per aggregator of ``functional``.

Each takes the ``GradientBalancer`` arguments (``weighting``, ``surgery_interval``,
``measure_interval``, ``chunk_numel``, ``bucket_numel``, ``seed``) and the aggregator's own.
"""

from __future__ import annotations

from collections.abc import Sequence

from adperception.balancing.balancer import GradientBalancer
from adperception.registry import BALANCERS


@BALANCERS.register_module()
def PCGrad(tasks: Sequence[str], **kwargs) -> GradientBalancer:
    """Projecting conflicting gradients (Yu et al. 2020), in every sharing group."""
    return GradientBalancer(tasks, aggregator="pcgrad", **kwargs)


@BALANCERS.register_module()
def CAGrad(tasks: Sequence[str], **kwargs) -> GradientBalancer:
    """Conflict-averse gradient descent (Liu et al. 2021); ``c`` (default 0.4) as in the paper."""
    return GradientBalancer(tasks, aggregator="cagrad", **kwargs)


@BALANCERS.register_module()
def IMTLG(tasks: Sequence[str], **kwargs) -> GradientBalancer:
    """IMTL-G (Liu et al. 2021): equal projections of the update onto every task gradient."""
    return GradientBalancer(tasks, aggregator="imtl_g", **kwargs)


@BALANCERS.register_module()
def MGDA(tasks: Sequence[str], **kwargs) -> GradientBalancer:
    """MGDA (Désidéri 2012, Sener & Koltun 2018): the min-norm point of the gradients' hull."""
    return GradientBalancer(tasks, aggregator="mgda", **kwargs)


@BALANCERS.register_module()
def NashMTL(tasks: Sequence[str], **kwargs) -> GradientBalancer:
    """Nash-MTL (Navon et al. 2022): the Nash bargaining solution among the task gradients."""
    return GradientBalancer(tasks, aggregator="nash_mtl", **kwargs)


@BALANCERS.register_module()
def FairGrad(tasks: Sequence[str], **kwargs) -> GradientBalancer:
    """FairGrad (Ban & Ji 2024): the α-fair update, ``(K w)_i = w_i^(−1/α)``; ``alpha`` (2)."""
    return GradientBalancer(tasks, aggregator="fairgrad", **kwargs)


@BALANCERS.register_module()
def AlignedMTL(tasks: Sequence[str], **kwargs) -> GradientBalancer:
    """Aligned-MTL (Senushkin et al. 2023): the task gradients' principal components aligned to
    one norm, the smallest singular value."""
    return GradientBalancer(tasks, aggregator="aligned_mtl", **kwargs)
