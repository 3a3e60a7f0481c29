# The quickstart network with the task grouping tools/analyze_affinity.py recommends for two
# branches from configs/experiments/affinity_synthdrive.py (docs/experiments/architectures.md):
# segmentation with depth, detection with normals, instead of the semantic/geometric split.
_base_ = ["../../quickstart.py"]
model = dict(
    backbone=dict(
        branches=dict(_delete_=True, seg_depth=["seg", "depth"], det_normals=["det", "normals"])
    )
)
