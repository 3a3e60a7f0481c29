# The ad_mtl network with detection only (same backbone, neck and DINO head): the single-task
# baseline for Δm. One branch group, so no stage is copied. DINO reads the stride-8, 16 and 32
# maps, which the FPN computes from the last three stages: the neck starts at stage 1
# (start_level=1), so no neck weight goes untrained (and DDP finds no unused parameter).
_base_ = ["../ad_mtl.py"]
_det = {{_base_.model.heads.det}}
model = dict(
    backbone=dict(branches=dict(_delete_=True, det=["det"])),
    neck=dict(start_level=1, num_outs=3),
    heads=dict(_delete_=True, det=_det),
)
val_evaluator = dict(type="MultiTaskMetric", tasks=("det",))
test_evaluator = val_evaluator
