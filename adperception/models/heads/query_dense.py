"""The multi-decoder transformer's dense query heads: depth from adaptive bins and normals from
normal modes, each a set of learned queries decoded over the shared encoder's memory.

Both follow AdaBins (Bhat et al. 2021) in its query form (as BinsFormer, Li et al. 2022): each
query carries a value (a depth bin, a normal direction) and a mask over the pixels; a pixel's
prediction is the softmax-over-queries mixture of the values. The scene decides the values,
so a few queries cover what a fixed discretisation needs many for; driving scenes are mostly
planar (road, walls, vehicles' sides), which a handful of normal modes describe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from adperception.models.heads.depth import DepthHeadBase
from adperception.models.heads.normals import NormalsHeadBase
from adperception.models.layers.query_decoder import QueryDecoder, mlp
from adperception.registry import MODELS


@MODELS.register_module()
class AdaptiveBinsDepthHead(DepthHeadBase):
    """Metric depth as a per-pixel mixture of ``num_bins`` bins that the image decides.

    Each decoded query gives a bin width; the widths, normalised to sum to 1 over the queries
    (AdaBins' normalisation, with a softmax so that every width stays positive), partition
    [log ``min_depth``, log ``max_depth``], and each bin's centre is its midpoint. The bins live
    in log-depth for the reason ``DepthHead`` regresses log-depth: a driving scene spans two
    orders of magnitude, and a fixed error there is a fixed relative error. Each pixel's depth
    is exp of the centres averaged with the softmax over its query mask logits.

    ``forward(feats)`` returns depth B×1×(Hp/4)×(Wp/4) in metres, inside [min, max]; the loss,
    prediction and the zoom convention are ``DepthHead``'s.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_bins: int = 32,
        num_layers: int = 3,
        num_heads: int = 8,
        feedforward_channels: int = 1024,
        loss_type: str = "silog",
        min_depth: float = 1e-3,
        max_depth: float = 80.0,
    ) -> None:
        if not (0 < min_depth < max_depth < math.inf):
            raise ValueError(
                f"AdaptiveBinsDepthHead: the bins need 0 < min_depth < max_depth < inf, got "
                f"{min_depth}, {max_depth}"
            )
        super().__init__(loss_type=loss_type, min_depth=min_depth, max_depth=max_depth)
        self.decoder = QueryDecoder(
            embed_dims=in_channels,
            num_queries=num_bins,
            num_layers=num_layers,
            num_heads=num_heads,
            feedforward_channels=feedforward_channels,
        )
        self.bin_width = mlp(in_channels, in_channels, 1)

    def bin_centres(self, queries: Tensor) -> Tensor:
        """B×Q log-depth centres of the bins of B×Q×C decoded queries, increasing along Q."""
        widths = torch.softmax(self.bin_width(queries).squeeze(-1), dim=1)
        midpoints = torch.cumsum(widths, dim=1) - widths / 2
        low, high = math.log(self.min_depth), math.log(self.max_depth)
        return low + (high - low) * midpoints

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        queries, masks = self.decoder(feats)
        weights = torch.softmax(masks.float(), dim=1)
        log_depth = torch.einsum("bq,bqhw->bhw", self.bin_centres(queries.float()), weights)
        return torch.exp(log_depth).unsqueeze(1)


@MODELS.register_module()
class QueryNormalsHead(NormalsHeadBase):
    """Surface normals as a per-pixel mixture of ``num_modes`` unit normals the image decides.

    Each decoded query gives a normal direction; each pixel's normal is the renormalised
    average of the directions with the softmax over its query mask logits, so a pixel inside a
    plane takes that plane's normal and a pixel on a curved surface blends neighbouring modes.

    ``forward(feats)`` returns unit normals B×3×(Hp/4)×(Wp/4); the loss and prediction are
    ``NormalsHead``'s.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_modes: int = 32,
        num_layers: int = 3,
        num_heads: int = 8,
        feedforward_channels: int = 1024,
    ) -> None:
        super().__init__()
        self.decoder = QueryDecoder(
            embed_dims=in_channels,
            num_queries=num_modes,
            num_layers=num_layers,
            num_heads=num_heads,
            feedforward_channels=feedforward_channels,
        )
        self.direction = mlp(in_channels, in_channels, 3)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        queries, masks = self.decoder(feats)
        directions = F.normalize(self.direction(queries.float()), dim=-1)
        weights = torch.softmax(masks.float(), dim=1)
        return F.normalize(torch.einsum("bqk,bqhw->bkhw", directions, weights), dim=1)
