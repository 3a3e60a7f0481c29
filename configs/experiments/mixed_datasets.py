# The six tasks on three datasets at once, each labelled for some of them (partial labels):
#   BDD100K      det (10 classes), drivable, lanes, seg where its sem_seg masks exist
#   SynthDrive   all six (its 8 detection classes are BDD100K's first 8: person = pedestrian)
#   Cityscapes   det, seg, depth (no normals, drivable or lanes)
# Every batch draws 2 : 1 : 1 samples from them (mmdet's MultiSourceSampler over the
# concatenation); a task no sample of a batch is labelled for contributes nothing to that step.
# The first dataset's metainfo names the classes, so BDD100K comes first. Evaluate per dataset:
#   python tools/test.py configs/experiments/mixed_datasets.py CKPT \
#       --cfg-options test_dataloader.dataset.type=CityscapesMTL \
#       test_dataloader.dataset.data_root=data/cityscapes
_base_ = ["../quickstart_six_tasks.py"]

_pipeline = {{_base_.train_pipeline}}
# BDD100K's detection classes; the others' ids are its first 8
_det_classes = (
    "pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    "traffic light", "traffic sign",
)  # fmt: skip
model = dict(heads=dict(det=dict(num_classes=len(_det_classes))))
batch_size = 4
train_dataloader = dict(
    batch_size=batch_size,
    sampler=dict(
        _delete_=True,
        type="mmdet.MultiSourceSampler",
        batch_size=batch_size,
        source_ratio=[1, 2, 1],
    ),
    dataset=dict(
        _delete_=True,
        type="ConcatDataset",
        # class names differ (their ids agree); the first dataset's are the concatenation's
        ignore_keys=["det_classes", "drivable_classes", "lane_classes"],
        datasets=[
            dict(type="BDD100KMTL", data_root="data/bdd100k", split="train", pipeline=_pipeline),
            dict(type="SynthDrive", data_root="data/synthdrive", split="train", pipeline=_pipeline),
            dict(
                type="CityscapesMTL", data_root="data/cityscapes", split="train", pipeline=_pipeline
            ),
        ],
    ),
)
# Evaluation names the 10 classes whichever dataset it runs on (COCO AP averages the classes
# that have boxes there).
val_dataloader = dict(dataset=dict(metainfo=dict(det_classes=_det_classes)))
test_dataloader = val_dataloader
