# DINO (Zhang et al. 2023) from mmdet, the default detection head: denoising queries and
# two-stage query selection over the stride-8, 16 and 32 FPN maps. In docs/benchmarks.md it is
# the only decoder that learns within the quickstart's budget (DAB-DETR: det/mAP_50 0.0 after
# 1000 iterations) and the one that generalises best on held-out boxes at equal steps. mmdet's
# DINO decoder embeds its reference points with a 256-channel sine embedding, so the FPN maps
# it reads must have 256 channels.
_embed = 256
_levels = 3
_focal = dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)
model = dict(
    heads=dict(
        det=dict(
            type="DetectionHead",
            num_classes=8,
            in_channels=_embed,
            detector=dict(
                type="DINO",
                num_queries=300,
                num_feature_levels=_levels,
                with_box_refine=True,
                as_two_stage=True,
                encoder=dict(
                    num_layers=6,
                    layer_cfg=dict(
                        self_attn_cfg=dict(embed_dims=_embed, num_levels=_levels, dropout=0.0),
                        ffn_cfg=dict(embed_dims=_embed, feedforward_channels=2048, ffn_drop=0.0),
                    ),
                ),
                decoder=dict(
                    num_layers=6,
                    return_intermediate=True,
                    layer_cfg=dict(
                        self_attn_cfg=dict(embed_dims=_embed, num_heads=8, dropout=0.0),
                        cross_attn_cfg=dict(embed_dims=_embed, num_levels=_levels, dropout=0.0),
                        ffn_cfg=dict(embed_dims=_embed, feedforward_channels=2048, ffn_drop=0.0),
                    ),
                    post_norm_cfg=None,
                ),
                positional_encoding=dict(
                    num_feats=_embed // 2, normalize=True, offset=0.0, temperature=20
                ),
                bbox_head=dict(
                    type="DINOHead",
                    embed_dims=_embed,
                    sync_cls_avg_factor=True,
                    loss_cls=_focal,
                    loss_bbox=dict(type="L1Loss", loss_weight=5.0),
                    loss_iou=dict(type="GIoULoss", loss_weight=2.0),
                ),
                dn_cfg=dict(
                    label_noise_scale=0.5,
                    box_noise_scale=1.0,
                    group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=100),
                ),
                train_cfg=dict(
                    assigner=dict(
                        type="FiniteHungarianAssigner",
                        match_costs=[
                            dict(type="FocalLossCost", weight=2.0),
                            dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
                            dict(type="IoUCost", iou_mode="giou", weight=2.0),
                        ],
                    )
                ),
                test_cfg=dict(max_per_img=100),
            ),
        )
    )
)
