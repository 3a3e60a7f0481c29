# Cityscapes-scale schedule: 40k iterations × 16 images (8 GPUs × 2) / 2975 images ≈ 215 epochs.
# AdamW with the backbone at 0.1× the heads' learning rate, linear warm-up, then cosine decay.
max_iters = 40000
# The constructor keeps the balancer's own parameters out of weight decay and clipping. torch's
# fused AdamW updates every parameter in one kernel, on CPU too (since torch 2.4): the quickstart's
# optimizer step takes 0.6x the per-parameter loop's time (docs/benchmarks.md).
optim_wrapper = dict(
    type="MTLOptimWrapper",
    constructor="MTLOptimWrapperConstructor",
    optimizer=dict(type="AdamW", lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05, fused=True),
    paramwise_cfg=dict(custom_keys={"backbone": dict(lr_mult=0.1)}, norm_decay_mult=0.0),
    clip_grad=dict(max_norm=1.0, norm_type=2),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=1000),
    dict(type="CosineAnnealingLR", by_epoch=False, begin=1000, end=max_iters, eta_min=1e-6),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=4000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
