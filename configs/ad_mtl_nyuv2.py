# The ad_mtl network on NYUv2 (the MTL literature's 288×384 npy release): 13-class segmentation,
# depth and normals, no detection. Segmentation gets its own branch, depth and normals share one.
_base_ = [
    "_base_/models/mtl_swin.py",
    "_base_/datasets/nyuv2.py",
    "_base_/schedules/iter_40k.py",
    "_base_/default_runtime.py",
]
model = dict(
    backbone=dict(branches=dict(_delete_=True, semantic=["seg"], geometric=["depth", "normals"])),
    heads=dict(
        _delete_=True,
        seg=dict(type="SegmentationHead", in_channels=256, channels=128, num_classes=13),
        # Predictions clamped to the depth literature's NYUv2 caps, 1 mm to 10 m.
        depth=dict(
            type="DepthHead",
            in_channels=256,
            channels=128,
            loss_type="silog",
            init_depth=3.0,
            min_depth=1e-3,
            max_depth=10.0,
        ),
        normals=dict(type="NormalsHead", in_channels=256, channels=128),
    ),
)
# 10k iterations × 16 images (8 GPUs × 2) / 795 training images ≈ 200 epochs, as mtan trains.
max_iters = 10000
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=500),
    dict(type="CosineAnnealingLR", by_epoch=False, begin=500, end=max_iters, eta_min=1e-6),
]
train_cfg = dict(max_iters=max_iters, val_interval=2000)
# Depth in metres of the original image, targets outside (1 mm, 10 m) ignored.
val_evaluator = dict(
    type="MultiTaskMetric", tasks=("seg", "depth", "normals"), min_depth=1e-3, max_depth=10.0
)
test_evaluator = val_evaluator
