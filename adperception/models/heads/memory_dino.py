"""DINO decoding a memory encoded elsewhere: the multi-decoder transformer's detector.

In mmdet's DINO the deformable encoder is the detector's own. In the multi-decoder transformer
one encoder (``DeformableEncoderNeck``) serves every task's decoder, so this DINO has none: its
query selection, denoising queries, decoder and set loss read the shared memory directly.
"""

from __future__ import annotations

import torch
from mmdet.models.detectors import DINO
from mmdet.models.layers import DinoTransformerDecoder, SinePositionalEncoding
from mmdet.registry import MODELS as MMDET_MODELS
from torch import Tensor, nn


@MMDET_MODELS.register_module()
class MemoryDINO(DINO):
    """mmdet's DINO without its encoder (``encoder=None``); everything else is DINO's.

    DINO's level embedding reaches its encoder through the positions only; here it is added to
    the memory of each level instead, so the query selection still knows each token's level.
    """

    def __init__(self, *args, encoder: dict | None = None, **kwargs) -> None:
        if encoder is not None:
            raise ValueError(
                "MemoryDINO decodes the shared encoder's memory: set its encoder=None (the "
                "encoder is the model's neck, DeformableEncoderNeck)"
            )
        super().__init__(*args, encoder=None, **kwargs)

    def _init_layers(self) -> None:
        """DINO's layers but the encoder."""
        self.positional_encoding = SinePositionalEncoding(**self.positional_encoding)
        self.encoder = nn.Identity()  # no parameters, so DINO's init_weights skips it
        self.decoder = DinoTransformerDecoder(**self.decoder)
        self.embed_dims = self.decoder.embed_dims
        self.query_embedding = nn.Embedding(self.num_queries, self.embed_dims)
        # Drawn now, as DINO's init_weights would, not left as torch.empty's garbage (NaN on
        # some allocations) for a model used before init_weights.
        self.level_embed = nn.Parameter(torch.randn(self.num_feature_levels, self.embed_dims))
        self.memory_trans_fc = nn.Linear(self.embed_dims, self.embed_dims)
        self.memory_trans_norm = nn.LayerNorm(self.embed_dims)

    def forward_encoder(
        self,
        feat: Tensor,
        feat_mask: Tensor | None,
        feat_pos: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
    ) -> dict:
        """The flattened maps as the memory, each level plus its embedding."""
        sizes = [int(height) * int(width) for height, width in spatial_shapes]
        levels = feat.split(sizes, dim=1)
        memory = torch.cat([lv + self.level_embed[i] for i, lv in enumerate(levels)], dim=1)
        return dict(memory=memory, memory_mask=feat_mask, spatial_shapes=spatial_shapes)
