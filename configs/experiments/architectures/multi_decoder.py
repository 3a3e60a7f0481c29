# The multi-decoder transformer: the whole backbone and one deformable encoder (Mask2Former's
# pixel decoder, 2 layers) shared by the four tasks, then one query decoder per task over the
# same encoder memory: DINO's for boxes (without an encoder of its own), Mask2Former's
# masked-attention decoder for segmentation, adaptive depth bins (AdaBins-style) and normal
# modes. Sized as the quickstart's DINO: 2-layer decoders with 512-wide FFNs.
_base_ = ["../../quickstart.py"]
_embed = 256
_ffn = 512
_attention = dict(
    embed_dims=_embed, num_heads=8, attn_drop=0.0, proj_drop=0.0, dropout_layer=None,
    batch_first=True,
)  # fmt: skip
_classes = 19
model = dict(
    backbone=dict(
        shared_stages=4, branches=dict(_delete_=True, all=["det", "seg", "depth", "normals"])
    ),
    neck=dict(
        _delete_=True,
        type="DeformableEncoderNeck",
        out_channels=_embed,
        num_layers=2,
        feedforward_channels=_ffn,
    ),
    heads=dict(
        det=dict(detector=dict(type="MemoryDINO", encoder=None)),
        # mmseg's cityscapes Mask2Former (configs/mask2former), with 3 decoder layers (one per
        # level), 32 queries for 19 classes and as many sampled points as a stride-4 mask of
        # the quickstart's 128×256 crops has pixels
        seg=dict(
            _delete_=True,
            type="MaskClassificationHead",
            in_channels=_embed,
            num_classes=_classes,
            decode_head=dict(
                num_queries=32,
                num_transformer_feat_level=3,
                align_corners=False,
                enforce_decoder_input_project=False,
                positional_encoding=dict(num_feats=_embed // 2, normalize=True),
                transformer_decoder=dict(
                    return_intermediate=True,
                    num_layers=3,
                    layer_cfg=dict(
                        self_attn_cfg=_attention,
                        cross_attn_cfg=_attention,
                        ffn_cfg=dict(
                            embed_dims=_embed,
                            feedforward_channels=_ffn,
                            num_fcs=2,
                            act_cfg=dict(type="ReLU", inplace=True),
                            ffn_drop=0.0,
                            dropout_layer=None,
                            add_identity=True,
                        ),
                    ),
                    init_cfg=None,
                ),
                loss_cls=dict(
                    type="mmdet.CrossEntropyLoss",
                    use_sigmoid=False,
                    loss_weight=2.0,
                    reduction="mean",
                    class_weight=[1.0] * _classes + [0.1],
                ),
                loss_mask=dict(
                    type="mmdet.CrossEntropyLoss",
                    use_sigmoid=True,
                    reduction="mean",
                    loss_weight=5.0,
                ),
                loss_dice=dict(
                    type="mmdet.DiceLoss",
                    use_sigmoid=True,
                    activate=True,
                    reduction="mean",
                    naive_dice=True,
                    eps=1.0,
                    loss_weight=5.0,
                ),
                train_cfg=dict(
                    num_points=2048,
                    oversample_ratio=3.0,
                    importance_sample_ratio=0.75,
                    assigner=dict(
                        type="mmdet.FiniteHungarianAssigner",
                        match_costs=[
                            dict(type="mmdet.ClassificationCost", weight=2.0),
                            dict(type="mmdet.CrossEntropyLossCost", weight=5.0, use_sigmoid=True),
                            dict(type="mmdet.DiceCost", weight=5.0, pred_act=True, eps=1.0),
                        ],
                    ),
                    sampler=dict(type="mmdet.MaskPseudoSampler"),
                ),
            ),
        ),
        depth=dict(
            _delete_=True,
            type="AdaptiveBinsDepthHead",
            in_channels=_embed,
            num_bins=32,
            num_layers=2,
            feedforward_channels=_ffn,
            loss_type="silog",
            min_depth=1e-3,
            max_depth=80.0,
        ),
        normals=dict(
            _delete_=True,
            type="QueryNormalsHead",
            in_channels=_embed,
            num_modes=32,
            num_layers=2,
            feedforward_channels=_ffn,
        ),
    ),
)
