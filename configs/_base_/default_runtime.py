# Runtime shared by every config: our registry scope, atomic checkpoints, iteration-based logs.
default_scope = "adperception"
runner_type = "MTLRunner"

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    # tools/train.py switches to gloo without CUDA. timeout (s) bounds every collective: a rank
    # that hangs (rather than dies, which torchrun sees) fails the others after 30 min instead
    # of never; long enough for rank 0 to write a checkpoint while the others wait.
    dist_cfg=dict(backend="nccl", timeout=1800),
)
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=2000, max_keep_ckpts=3),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
log_processor = dict(by_epoch=False, window_size=10)
# Per-task gradient norms, cosines, conflict and oscillation on the shared parameters, at the
# balancer's measurement steps (model.balancer.measure_interval); tools/analyze_logs.py draws them.
custom_hooks = [dict(type="GradientDiagnosticsHook")]
vis_backends = [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]
visualizer = dict(type="Visualizer", vis_backends=vis_backends, name="visualizer")
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
