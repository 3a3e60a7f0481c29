# ad_mtl with DAB-DETR (Liu et al. 2022) from mmdet, the default detection head until DINO
# replaced it: anchor-box queries converge several times faster than DETR's on a fixed batch, but
# on SynthDrive it reaches det/mAP_50 0.0 after 1000 quickstart iterations, DINO 13.7 after 500
# (docs/benchmarks.md). It reads the stride-32 map alone.
_base_ = ["../ad_mtl.py"]
_embed = 256
_ffn = dict(
    embed_dims=_embed,
    feedforward_channels=2048,
    num_fcs=2,
    ffn_drop=0.0,
    act_cfg=dict(type="PReLU"),
)
_attn = dict(embed_dims=_embed, num_heads=8, attn_drop=0.0, proj_drop=0.0)
model = dict(
    heads=dict(
        det=dict(
            type="DetectionHead",
            num_classes=8,
            in_channels=_embed,
            detector=dict(
                _delete_=True,
                type="DABDETR",
                num_queries=100,
                with_random_refpoints=False,
                num_patterns=0,
                encoder=dict(
                    num_layers=6,
                    layer_cfg=dict(
                        self_attn_cfg=dict(
                            embed_dims=_embed, num_heads=8, dropout=0.0, batch_first=True
                        ),
                        ffn_cfg=_ffn,
                    ),
                ),
                decoder=dict(
                    num_layers=6,
                    query_dim=4,
                    query_scale_type="cond_elewise",
                    with_modulated_hw_attn=True,
                    layer_cfg=dict(
                        self_attn_cfg=dict(_attn, cross_attn=False),
                        cross_attn_cfg=dict(_attn, cross_attn=True),
                        ffn_cfg=_ffn,
                    ),
                    return_intermediate=True,
                ),
                positional_encoding=dict(num_feats=_embed // 2, temperature=20, normalize=True),
                bbox_head=dict(
                    type="DABDETRHead",
                    embed_dims=_embed,
                    loss_cls=dict(
                        type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0
                    ),
                    loss_bbox=dict(type="L1Loss", loss_weight=5.0),
                    loss_iou=dict(type="GIoULoss", loss_weight=2.0),
                ),
                train_cfg=dict(
                    assigner=dict(
                        type="FiniteHungarianAssigner",
                        match_costs=[
                            dict(type="FocalLossCost", weight=2.0, eps=1e-8),
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
