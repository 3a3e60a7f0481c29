# The ad_mtl network with depth only (same backbone and neck, the same head): the single-task
# baseline for Δm. One branch group, so no stage is copied.
_base_ = ["../ad_mtl.py"]
model = dict(
    backbone=dict(branches=dict(_delete_=True, depth=["depth"])),
    heads=dict(
        _delete_=True,
        depth={{_base_.model.heads.depth}},
    ),
)
val_evaluator = dict(type="MultiTaskMetric", tasks=("depth",))
test_evaluator = val_evaluator
