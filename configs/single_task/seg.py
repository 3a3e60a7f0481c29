# The ad_mtl network with seg only (same backbone and neck, the same head): the single-task
# baseline for Δm. One branch group, so no stage is copied.
_base_ = ["../ad_mtl.py"]
model = dict(
    backbone=dict(branches=dict(_delete_=True, seg=["seg"])),
    heads=dict(
        _delete_=True,
        seg=dict(type="SegmentationHead", in_channels=256, channels=128, num_classes=19),
    ),
)
val_evaluator = dict(type="MultiTaskMetric", tasks=("seg",))
test_evaluator = val_evaluator
