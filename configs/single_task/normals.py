# The ad_mtl network with normals only (same backbone and neck, the same head): the single-task
# baseline for Δm. One branch group, so no stage is copied.
_base_ = ["../ad_mtl.py"]
model = dict(
    backbone=dict(branches=dict(_delete_=True, normals=["normals"])),
    heads=dict(_delete_=True, normals=dict(type="NormalsHead", in_channels=256, channels=128)),
)
val_evaluator = dict(type="MultiTaskMetric", tasks=("normals",))
test_evaluator = val_evaluator
