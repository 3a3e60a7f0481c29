# The Δm sweep of docs/experiments/synthdrive.md: the quickstart network on SynthDrive (the
# Makefile's data: 400 train / 100 val frames, seed 0) trained once per task and jointly under
# each balancer, 500 iterations each (half the quickstart's schedule, stretched to fit), seeds
# 0-2. (4 + 11) runs × 3 seeds, ~800 s per joint run (DINO: 1.6 s per iteration) ≈ 8 h on 2
# cores: run it in parts, e.g. --seeds 0; a second call resumes where the first stopped.
#   python tools/run_delta_m.py configs/experiments/delta_m_synthdrive.py
joint = "configs/quickstart.py"
iters = 500
seeds = 3
# The metrics Δm averages per task, +1 where higher is better, -1 where lower is.
metrics = dict(
    det={"det/mAP_50": 1},
    seg={"seg/mIoU": 1},
    depth={"depth/abs_rel": -1, "depth/rmse": -1},
    normals={"normals/mean": -1, "normals/within_11.25": 1},
)
_epoch = 400 // 4  # DWA's epoch: 400 training frames in batches of 4
methods = dict(
    EqualWeighting=dict(type="EqualWeighting"),
    UncertaintyWeighting=dict(type="UncertaintyWeighting"),  # every task starts at weight 1
    # Kendall et al.'s start, s = 0: every weight ½, half the learning rate of a short schedule
    UncertaintyWeightingHalf=dict(type="UncertaintyWeighting", init_log_var=0.0),
    GradNorm=dict(type="GradNorm"),
    DWA=dict(type="DWA", epoch_iters=_epoch),
    TrendWeighting=dict(type="TrendWeighting"),
    PCGrad=dict(type="PCGrad"),
    Escalation=dict(type="Escalation", measure_interval=25),
    CAGrad=dict(type="CAGrad"),
    NashMTL=dict(type="NashMTL"),
    FAMO=dict(type="FAMO"),
)
