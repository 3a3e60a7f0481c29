# Which tasks should share what: a short run of the quickstart network with every stage and one
# FPN shared by all four tasks (so that every pair's gradients meet at every stage), measuring
# the lookahead affinity of Fifty et al. 2021 every 15 iterations beside the gradient
# diagnostics. 150 iterations, ~12 minutes on 2 cores. Then:
#   python tools/train.py configs/experiments/affinity_synthdrive.py --work-dir work_dirs/affinity
#   python tools/analyze_affinity.py work_dirs/affinity --budget 3
_base_ = ["architectures/hard_sharing.py"]
max_iters = 150
model = dict(balancer=dict(_delete_=True, type="EqualWeighting", measure_interval=15))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-2, by_epoch=False, begin=0, end=30),
    dict(type="CosineAnnealingLR", by_epoch=False, begin=30, end=max_iters, eta_min=1e-5),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters + 1)
default_hooks = dict(checkpoint=dict(interval=max_iters))
custom_hooks = [dict(type="GradientDiagnosticsHook"), dict(type="AffinityHook", interval=15)]
