# Conditional DETR (Meng et al. 2021) from mmdet.
_base_ = ["../ad_mtl.py"]
_embed = 256
_ffn = dict(
    embed_dims=_embed,
    feedforward_channels=2048,
    num_fcs=2,
    ffn_drop=0.1,
    act_cfg=dict(type="ReLU", inplace=True),
)
_focal = dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0)
model = dict(
    heads=dict(
        det=dict(
            type="DetectionHead",
            num_classes=8,
            in_channels=_embed,
            detector=dict(
                _delete_=True,
                type="ConditionalDETR",
                num_queries=100,
                encoder=dict(
                    num_layers=6,
                    layer_cfg=dict(
                        self_attn_cfg=dict(
                            embed_dims=_embed, num_heads=8, dropout=0.1, batch_first=True
                        ),
                        ffn_cfg=_ffn,
                    ),
                ),
                decoder=dict(
                    num_layers=6,
                    layer_cfg=dict(
                        self_attn_cfg=dict(
                            embed_dims=_embed, num_heads=8, attn_drop=0.1, cross_attn=False
                        ),
                        cross_attn_cfg=dict(
                            embed_dims=_embed, num_heads=8, attn_drop=0.1, cross_attn=True
                        ),
                        ffn_cfg=_ffn,
                    ),
                    return_intermediate=True,
                ),
                positional_encoding=dict(num_feats=_embed // 2, normalize=True),
                bbox_head=dict(
                    type="ConditionalDETRHead",
                    embed_dims=_embed,
                    loss_cls=_focal,
                    loss_bbox=dict(type="L1Loss", loss_weight=5.0),
                    loss_iou=dict(type="GIoULoss", loss_weight=2.0),
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
