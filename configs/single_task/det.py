# The ad_mtl network with detection only (same backbone, neck and DAB-DETR head): the
# single-task baseline for Δm. One branch group, so no stage is copied.
_base_ = ["../ad_mtl.py"]
_det = {{_base_.model.heads.det}}
model = dict(
    backbone=dict(branches=dict(_delete_=True, det=["det"])),
    heads=dict(_delete_=True, det=_det),
)
val_evaluator = dict(type="MultiTaskMetric", tasks=("det",))
test_evaluator = val_evaluator
