# The ad_mtl network with detection only (same backbone, neck and DAB-DETR head): the
# single-task baseline for Δm. One branch group, so no stage is copied. DAB-DETR reads the
# stride-32 map alone, which the FPN computes from the last stage only: the neck keeps just that
# level (start_level=3), so no neck weight goes untrained (and DDP finds no unused parameter).
_base_ = ["../ad_mtl.py"]
_det = {{_base_.model.heads.det}}
model = dict(
    backbone=dict(branches=dict(_delete_=True, det=["det"])),
    neck=dict(start_level=3, num_outs=1),
    heads=dict(_delete_=True, det=_det),
)
val_evaluator = dict(type="MultiTaskMetric", tasks=("det",))
test_evaluator = val_evaluator
