# The classic two-task balancing testbed on real data: scikit-learn's 1797 handwritten 8×8
# digits, task `digit` (10 classes) and task `parity` (even/odd), one conv trunk shared by both,
# a linear head each. tools/run_experiment.py trains it once per entry of `methods` and seed.
_base_ = ["../_base_/default_runtime.py"]
runner_type = "MTLRunner"

model = dict(type="DigitsMTLNet", hidden=64, balancer=dict(type="Escalation", measure_interval=10))

_data = dict(num_workers=0, collate_fn=dict(type="default_collate"))
train_dataloader = dict(
    _data,
    batch_size=64,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type="DigitsMTL", split="train"),
)
val_dataloader = dict(
    _data,
    batch_size=120,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="DigitsMTL", split="test"),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="DigitsAccuracy")
test_evaluator = val_evaluator

max_iters = 300  # × 64 images / 1437 training images ≈ 13 epochs
# 3e-3 rather than 1e-3: at 300 iterations 97-98 % on both tasks instead of 93-97 % (2 seeds).
optim_wrapper = dict(
    type="MTLOptimWrapper",
    constructor="MTLOptimWrapperConstructor",
    optimizer=dict(type="Adam", lr=3e-3),
)
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

default_hooks = dict(
    logger=dict(interval=20), checkpoint=dict(interval=max_iters, max_keep_ckpts=1)
)
custom_hooks = [dict(type="GradientDiagnosticsHook")]
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(vis_backends=vis_backends)
randomness = dict(seed=0, deterministic=True)

# The balancers tools/run_experiment.py compares (row name -> model.balancer), in the order a
# practitioner meets them: equal weights, then uncertainty weighting, GradNorm and PCGrad, then
# every other registered one. Every one measures its task gradients every 10 steps, not 50 (the
# diagnostics hook logs them): a 300-step run leaves room for the escalation's patience (5 in the
# published table's row).
_measure = 10
_epoch_iters = 1437 // 64  # DWA compares epoch means: 22 iterations ≈ one pass over the data
methods = dict(
    EqualWeighting=dict(type="EqualWeighting", measure_interval=_measure),
    UncertaintyWeighting=dict(type="UncertaintyWeighting", measure_interval=_measure),
    GradNorm=dict(type="GradNorm", measure_interval=_measure),
    PCGrad=dict(type="PCGrad", measure_interval=_measure),
    # Hand-set: 1 / each loss at initialisation (ln 10 ≈ 2.30, ln 2 ≈ 0.69), so both start at 1.
    StaticWeighting=dict(
        type="StaticWeighting", weights=dict(digit=0.43, parity=1.44), measure_interval=_measure
    ),
    DWA=dict(type="DWA", epoch_iters=_epoch_iters, measure_interval=_measure),
    TrendWeighting=dict(type="TrendWeighting", measure_interval=_measure),
    FAMO=dict(type="FAMO", measure_interval=_measure),
    RLW=dict(type="RLW", measure_interval=_measure),
    LogLossWeighting=dict(type="LogLossWeighting", measure_interval=_measure),  # DB-MTL's
    CAGrad=dict(type="CAGrad", measure_interval=_measure),
    IMTLG=dict(type="IMTLG", measure_interval=_measure),
    MGDA=dict(type="MGDA", measure_interval=_measure),
    NashMTL=dict(type="NashMTL", measure_interval=_measure),
    FairGrad=dict(type="FairGrad", measure_interval=_measure),
    AlignedMTL=dict(type="AlignedMTL", measure_interval=_measure),
    # from uncertainty weighting with the earlier symptom settings, as the published table ran
    # (the default is FAMO's, with a fivefold ratio over 2 measurements at momentum 0.5, since)
    Escalation=dict(
        type="Escalation",
        weighting=dict(type="UncertaintyWeighting"),
        measure_interval=_measure,
        imbalance_threshold=1.0,
        momentum=0.8,
        patience=5,
    ),
    pcgrad_k8=dict(type="PCGrad", surgery_interval=8, measure_interval=_measure),
)
