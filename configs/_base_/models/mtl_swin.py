# The four-task network: Swin-T, stages 0-1 shared, stages 2-3 copied per task group with
# bottleneck adapters, one FPN per group, DINO for boxes and FPN heads for the dense tasks.
_base_ = ["../detectors/dino.py"]
model = dict(
    type="MultiTaskModel",
    data_preprocessor=dict(
        type="mmdet.DetDataPreprocessor",
        mean=[123.675, 116.28, 103.53],  # ImageNet statistics, RGB (the datasets decode RGB)
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=False,
        pad_size_divisor=32,
    ),
    backbone=dict(
        type="BranchedBackbone",
        model_name="swin_tiny_patch4_window7_224",
        pretrained=None,  # a local timm or official checkpoint path; never downloaded
        shared_stages=2,
        branches=dict(semantic=["det", "seg"], geometric=["depth", "normals"]),
        adapter=dict(type="bottleneck", reduction=4),
        drop_path_rate=0.2,
    ),
    neck=dict(type="mmdet.FPN", out_channels=256, num_outs=4),
    # FAMO's loss weighting; every 50 steps the task gradients are measured on the shared
    # parameters. Once the moving average (momentum 0.5) of the worst sharing group's conflict
    # strength (mean cosine magnitude of conflicting pairs) stays above 0.1 for 2 measurements,
    # PCGrad takes over; once its gradient norms stay more than 5x apart (log10 ratio above
    # 0.7), the norms are equalised; both: both (docs/design.md §5). FAMO rather than
    # uncertainty weighting, and these thresholds rather than a tenfold ratio over 5
    # measurements at momentum 0.8: Δm on SynthDrive (docs/experiments/synthdrive_findings.md
    # §4, §8).
    balancer=dict(
        type="Escalation",
        weighting=dict(type="FAMO"),
        measure_interval=50,  # the diagnostics hook logs these measurements
        conflict_threshold=0.1,
        imbalance_threshold=0.7,
        momentum=0.5,
        patience=2,
    ),
    heads=dict(
        seg=dict(type="SegmentationHead", in_channels=256, channels=128, num_classes=19),
        # Predictions clamped to the driving literature's depth caps, 1 mm to 80 m.
        depth=dict(
            type="DepthHead",
            in_channels=256,
            channels=128,
            loss_type="silog",
            min_depth=1e-3,
            max_depth=80.0,
        ),
        normals=dict(type="NormalsHead", in_channels=256, channels=128),
    ),
)
