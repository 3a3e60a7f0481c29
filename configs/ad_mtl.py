# Swin-T four-task model, 512×1024 crops, 8 GPUs × 2 images, 40k iterations (Cityscapes scale).
# The data root defaults to the generated SynthDrive tree so that it runs out of the box; its
# 256×512 frames are zoomed 2-4× into the crops here. For full-resolution synthetic data run
# tools/make_synthetic.py --height 1024 --width 2048, or train on Cityscapes (ad_mtl_cityscapes.py).
_base_ = [
    "_base_/models/mtl_swin.py",
    "_base_/datasets/synthdrive.py",
    "_base_/schedules/iter_40k.py",
    "_base_/default_runtime.py",
]
crop_size = (512, 1024)  # (h, w)
train_pipeline = [
    # s = min(2048 / W, 1024 / H) × ratio: the frame at Cityscapes' 1024×2048 scale, 0.5× to 2×
    dict(type="RandomResize", scale=(2048, 1024), ratio_range=(0.5, 2.0)),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackMTLInputs"),
]
test_pipeline = [dict(type="Resize", scale=(2048, 1024)), dict(type="PackMTLInputs")]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
# Depth in metres of the original image, targets outside (1 mm, 80 m) ignored as in the driving
# literature: Cityscapes' smallest non-zero disparity (code 2, 1/256 px) decodes to ~10^5 m.
val_evaluator = dict(type="MultiTaskMetric", min_depth=1e-3, max_depth=80.0)
test_evaluator = val_evaluator
