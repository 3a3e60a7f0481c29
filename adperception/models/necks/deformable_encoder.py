"""The multi-decoder transformer's shared encoder: mmdet's multi-scale deformable-attention
pixel decoder (Mask2Former's), run once per image as the neck that every task's decoder reads.

It replaces the per-decoder encoders of DINO and Mask2Former by one: the deformable encoder
attends across the stride-8, 16 and 32 maps, and an FPN step adds the stride-4 map to the
encoded stride-8 one. Its outputs follow the neck contract of every head (four maps at strides
4, 8, 16, 32 with ``out_channels`` each), so the FPN heads run on it unchanged as well.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmdet.models.layers import MSDeformAttnPixelDecoder
from mmengine.config import ConfigDict
from mmengine.model import BaseModule
from torch import Tensor

from adperception.models.heads.dense import FEATURE_STRIDES
from adperception.registry import MODELS


@MODELS.register_module()
class DeformableEncoderNeck(BaseModule):
    """Backbone maps (strides 4..32) → the encoded memory the task decoders share.

    Args:
        in_channels: channels of the four backbone maps (the model fills them in).
        out_channels: channels of every output map and of the encoder (DINO needs 256).
        num_layers: deformable encoder layers (Mask2Former: 6).
        num_heads, num_points: of each multi-scale deformable attention.
        feedforward_channels: of each encoder layer's FFN.
        norm_cfg: of the lateral and output convolutions (Mask2Former: GroupNorm, 32 groups).

    ``forward(feats)`` returns ``(stride 4, stride 8, stride 16, stride 32)``: the pixel map
    mmdet's decoder makes for mask prediction, then its encoded levels, finest first.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        out_channels: int = 256,
        num_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        feedforward_channels: int = 1024,
        norm_cfg: dict | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if len(in_channels) != len(FEATURE_STRIDES):
            raise ValueError(
                f"DeformableEncoderNeck reads {len(FEATURE_STRIDES)} backbone maps (strides "
                f"{FEATURE_STRIDES}), got in_channels={list(in_channels)}"
            )
        levels = len(FEATURE_STRIDES) - 1  # the deformable encoder's; stride 4 is the FPN step
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels=list(in_channels),
            strides=list(FEATURE_STRIDES),
            feat_channels=out_channels,
            out_channels=out_channels,
            num_outs=levels,
            norm_cfg=norm_cfg or dict(type="GN", num_groups=32),
            # mmdet reads it by attribute
            encoder=ConfigDict(
                num_layers=num_layers,
                layer_cfg=dict(
                    self_attn_cfg=dict(
                        embed_dims=out_channels,
                        num_heads=num_heads,
                        num_levels=levels,
                        num_points=num_points,
                        dropout=0.0,
                        batch_first=True,
                    ),
                    ffn_cfg=dict(
                        embed_dims=out_channels,
                        feedforward_channels=feedforward_channels,
                        ffn_drop=0.0,
                    ),
                ),
            ),
            positional_encoding=dict(num_feats=out_channels // 2, normalize=True),
        )
        self.out_channels = out_channels

    def init_weights(self) -> None:
        # mmdet's own initialisation (Xavier projections, the deformable sampling offsets' grid)
        self.pixel_decoder.init_weights()

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, ...]:
        pixel, encoded = self.pixel_decoder(list(feats))  # encoded: coarsest level first
        return (pixel, *reversed(encoded))
