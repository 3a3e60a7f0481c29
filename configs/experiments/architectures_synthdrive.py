# The architecture table of docs/experiments/architectures.md: the quickstart's tasks, data and
# budget (300 iterations, as the Δm sweep of delta_m_synthdrive.py), seeds 0-2; every network
# against the same single-task runs of the quickstart network, each with the quickstart's
# balancer (the escalation). Run it in parts; finished runs are kept and a second call resumes:
#   python tools/run_delta_m.py configs/experiments/architectures_synthdrive.py
_base_ = ["delta_m_synthdrive.py"]
_arch = "configs/experiments/architectures/"
methods = dict(
    _delete_=True,
    # the escalation as it was when the table's seed 0 ran: from uncertainty weighting, a
    # tenfold ratio over 5 measurements at momentum 0.8 (the default is FAMO's, fivefold, 2 at
    # 0.5, since the Δm sweep: docs/experiments/synthdrive_findings.md §4, §8)
    partial_adapters=dict(
        type="Escalation",
        weighting=dict(type="UncertaintyWeighting"),
        measure_interval=25,
        surgery_interval=8,
        imbalance_threshold=1.0,
        momentum=0.8,
        patience=5,
    ),
)
networks = dict(
    _delete_=True,  # not the Δm sweep's network: this table lists its own, in its order
    hard_sharing=_arch + "hard_sharing.py",  # one group: the grouping of all tasks together
    grouping_affinity=_arch + "grouping_affinity.py",  # tools/analyze_affinity.py's grouping
    task_norms=_arch + "task_norms.py",
    hyper_adapters=_arch + "hyper_adapters.py",
    mtan=_arch + "mtan.py",
    cross_stitch=_arch + "cross_stitch.py",
    sluice=_arch + "sluice.py",
    multi_decoder=_arch + "multi_decoder.py",
)
# the report; the finished runs are kept beside it, in its folder's results/
out = "docs/experiments/architectures_delta_m.md"
work_dir = "work_dirs/architectures"
