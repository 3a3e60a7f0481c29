# ad_mtl on Cityscapes in its official layout (leftImg8bit, gtFine, disparity, camera): boxes of the
# 8 instance classes, 19-class segmentation and depth from disparity. Cityscapes has no normals,
# so that head goes and the geometric branch serves depth alone.
_base_ = ["ad_mtl.py"]
data_root = "data/cityscapes/"
model = dict(
    backbone=dict(branches=dict(_delete_=True, semantic=["det", "seg"], geometric=["depth"])),
    heads=dict(
        _delete_=True,
        det={{_base_.model.heads.det}},
        seg={{_base_.model.heads.seg}},
        depth={{_base_.model.heads.depth}},
    ),
)
train_dataloader = dict(dataset=dict(type="CityscapesMTL", data_root=data_root))
val_dataloader = dict(dataset=dict(type="CityscapesMTL", data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(type="MultiTaskMetric", tasks=("det", "seg", "depth"))
test_evaluator = val_evaluator
