# DETR (Carion et al. 2020) from mmdet. Slow to converge: kept as
# the reference the faster variants are measured against.
_base_ = ["../ad_mtl.py"]
_embed = 256
_attn = dict(embed_dims=_embed, num_heads=8, dropout=0.1, batch_first=True)
_ffn = dict(
    embed_dims=_embed,
    feedforward_channels=2048,
    num_fcs=2,
    ffn_drop=0.1,
    act_cfg=dict(type="ReLU", inplace=True),
)
model = dict(
    heads=dict(
        det=dict(
            type="DetectionHead",
            num_classes=8,
            in_channels=_embed,
            detector=dict(
                _delete_=True,
                type="DETR",
                num_queries=100,
                encoder=dict(num_layers=6, layer_cfg=dict(self_attn_cfg=_attn, ffn_cfg=_ffn)),
                decoder=dict(
                    num_layers=6,
                    layer_cfg=dict(self_attn_cfg=_attn, cross_attn_cfg=_attn, ffn_cfg=_ffn),
                    return_intermediate=True,
                ),
                positional_encoding=dict(num_feats=_embed // 2, normalize=True),
                bbox_head=dict(
                    type="DETRHead",
                    embed_dims=_embed,
                    loss_cls=dict(
                        type="CrossEntropyLoss",
                        bg_cls_weight=0.1,
                        use_sigmoid=False,
                        loss_weight=1.0,
                        class_weight=1.0,
                    ),
                    loss_bbox=dict(type="L1Loss", loss_weight=5.0),
                    loss_iou=dict(type="GIoULoss", loss_weight=2.0),
                ),
                train_cfg=dict(
                    assigner=dict(
                        type="FiniteHungarianAssigner",
                        match_costs=[
                            dict(type="ClassificationCost", weight=1.0),
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
