# The Δm sweep of docs/experiments/synthdrive.md: the quickstart network on SynthDrive (the
# Makefile's data: 400 train / 100 val frames, seed 0) trained once per task and jointly under
# each balancer, 300 iterations each (the quickstart's schedule, warm-up and decay, shrunk to
# fit), seeds 0-2. On 2 cores a plain joint run takes ~9 minutes and one with per-task
# gradients at every step (GradNorm, PCGrad, CAGrad, Nash-MTL) ~20: about 2.5 hours per seed.
# Run it in parts; the finished runs are kept beside the table and a second call resumes:
#   python tools/run_delta_m.py configs/experiments/delta_m_synthdrive.py --seeds 0
joint = "configs/quickstart.py"
iters = 300
seeds = 3
# The metrics Δm averages per task, +1 where higher is better, -1 where lower is.
metrics = dict(
    det={"det/mAP_50": 1},
    seg={"seg/mIoU": 1},
    depth={"depth/abs_rel": -1, "depth/rmse": -1},
    normals={"normals/mean": -1, "normals/within_11.25": 1},
)
_epoch = 400 // 4  # DWA's epoch: 400 training frames in batches of 4
# The escalation's symptom settings until the sweep's seeds 0-2 (a tenfold gradient-norm ratio
# over 5 measurements at momentum 0.8), pinned where its rows ran with them
_earlier_symptoms = dict(imbalance_threshold=1.0, momentum=0.8, patience=5)
# In the order they run: the escalation early, so that a partial sweep answers first whether
# joint training is worse than single-task training.
methods = dict(
    EqualWeighting=dict(type="EqualWeighting"),
    UncertaintyWeighting=dict(type="UncertaintyWeighting"),  # every task starts at weight 1
    # the escalation from uncertainty weighting: the default until seed 0 of this sweep
    Escalation=dict(
        type="Escalation",
        weighting=dict(type="UncertaintyWeighting"),
        measure_interval=25,
        surgery_interval=8,
        **_earlier_symptoms,
    ),
    # Kendall et al.'s start, s = 0: every weight ½, half the learning rate of a short schedule
    UncertaintyWeightingHalf=dict(type="UncertaintyWeighting", init_log_var=0.0),
    FAMO=dict(type="FAMO"),
    DWA=dict(type="DWA", epoch_iters=_epoch),
    TrendWeighting=dict(type="TrendWeighting"),
    GradNorm=dict(type="GradNorm"),
    PCGrad=dict(type="PCGrad"),
    CAGrad=dict(type="CAGrad"),
    NashMTL=dict(type="NashMTL"),
    # the escalation from FAMO's weighting with the earlier symptom settings: the default from
    # seed 0 of this sweep to its seed 2
    EscalationFAMO=dict(
        type="Escalation",
        weighting=dict(type="FAMO"),
        measure_interval=25,
        surgery_interval=8,
        **_earlier_symptoms,
    ),
    # the escalation from FAMO acting sooner and on a smaller imbalance, the default
    # (adperception.balancing.Escalation) since the sweep's seeds 0-2: FAMO's weights, near
    # c / loss, starve the detector, whose set loss keeps a high floor, by 5-30x on the shared
    # parameters; the earlier symptom switched at iteration 250 of 300 or not at all
    EscalationFAMOEarly=dict(
        type="Escalation",
        weighting=dict(type="FAMO"),
        measure_interval=25,
        surgery_interval=8,
        imbalance_threshold=0.7,
        momentum=0.5,
        patience=2,
    ),
)
# The default balancer on another grouping of the same network: tools/analyze_affinity.py's
# seg + depth | det + normals instead of det + seg | depth + normals (its config's balancer is
# the quickstart's, EscalationFAMOEarly's settings); against the same single-task runs, since a
# single-task network has one branch whatever the grouping.
networks = dict(grouping_affinity="configs/experiments/architectures/grouping_affinity.py")
# the report; the finished runs are kept beside it, in docs/experiments/synthdrive/results
out = "docs/experiments/synthdrive.md"
work_dir = "work_dirs/delta_m"
