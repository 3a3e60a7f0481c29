# The architecture table of docs/experiments/architectures.md: the quickstart's tasks, data and
# budget (300 iterations, as the Δm sweep of delta_m_synthdrive.py), seeds 0-2; every network
# against the same single-task runs of the quickstart network, each with the quickstart's
# balancer (the escalation). Run it in parts; finished runs are kept and a second call resumes:
#   python tools/run_delta_m.py configs/experiments/architectures_synthdrive.py
_base_ = ["delta_m_synthdrive.py"]
_arch = "configs/experiments/architectures/"
methods = dict(
    _delete_=True,
    partial_adapters=dict(type="Escalation", measure_interval=25, surgery_interval=8),
)
networks = dict(
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
