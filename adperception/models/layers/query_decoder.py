"""Learned queries decoded over a shared encoder's memory, each with a mask over the pixels: the
common core of the multi-decoder transformer's dense query heads (depth bins, normal modes)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmdet.models.layers import DetrTransformerDecoder, SinePositionalEncoding
from mmengine.model import BaseModule
from torch import Tensor, nn


def mlp(in_channels: int, hidden: int, out_channels: int, layers: int = 3) -> nn.Sequential:
    """Linear layers with ReLU between them (DETR's and Mask2Former's prediction MLPs)."""
    dims = [in_channels] + [hidden] * (layers - 1) + [out_channels]
    modules: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        modules.append(nn.Linear(a, b))
        if k < layers - 1:
            modules.append(nn.ReLU(inplace=True))
    return nn.Sequential(*modules)


class QueryDecoder(BaseModule):
    """``num_queries`` learned queries through mmdet's DETR decoder (self-attention, then
    cross-attention to the memory, then an FFN, per layer) over the encoded maps of strides 8 to
    32; each decoded query's mask embedding dotted with the stride-4 pixel map gives its mask
    logits, as in Mask2Former.

    ``forward(feats)`` takes the neck's four maps (stride 4 first, ``embed_dims`` channels each)
    and returns the decoded queries B×Q×C and their mask logits B×Q×(H/4)×(W/4). Every position
    is attended: the padding of a batch is the bottom/right of the maps, which the dense losses
    ignore anyway.
    """

    def __init__(
        self,
        *,
        embed_dims: int,
        num_queries: int,
        num_layers: int = 3,
        num_heads: int = 8,
        feedforward_channels: int = 1024,
        num_levels: int = 3,
    ) -> None:
        super().__init__()
        attention = dict(embed_dims=embed_dims, num_heads=num_heads, batch_first=True)
        self.decoder = DetrTransformerDecoder(
            num_layers=num_layers,
            layer_cfg=dict(
                self_attn_cfg=attention,
                cross_attn_cfg=attention,
                ffn_cfg=dict(
                    embed_dims=embed_dims,
                    feedforward_channels=feedforward_channels,
                    ffn_drop=0.0,
                ),
            ),
            return_intermediate=False,
        )
        self.positional_encoding = SinePositionalEncoding(num_feats=embed_dims // 2, normalize=True)
        self.level_embed = nn.Embedding(num_levels, embed_dims)
        self.query_feat = nn.Embedding(num_queries, embed_dims)
        self.query_pos = nn.Embedding(num_queries, embed_dims)
        self.mask_embed = mlp(embed_dims, embed_dims, embed_dims)
        self.num_levels = num_levels

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        pixel, *memory = feats
        if len(memory) != self.num_levels:
            raise ValueError(f"expected a pixel map and {self.num_levels} levels, got {len(feats)}")
        batch = pixel.shape[0]
        keys, key_pos = [], []
        for level, feat in enumerate(memory):
            mask = feat.new_zeros((batch, *feat.shape[-2:]), dtype=torch.bool)
            pos = self.positional_encoding(mask).flatten(2).transpose(1, 2)
            keys.append(feat.flatten(2).transpose(1, 2))
            key_pos.append(pos + self.level_embed.weight[level])
        key = torch.cat(keys, dim=1)
        queries = self.decoder(
            query=self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1),
            key=key,
            value=key,
            query_pos=self.query_pos.weight.unsqueeze(0).expand(batch, -1, -1),
            key_pos=torch.cat(key_pos, dim=1),
            key_padding_mask=None,
        )[-1]
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(queries), pixel)
        return queries, masks
