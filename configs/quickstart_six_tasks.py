# The quickstart with SynthDrive's two driving tasks added: drivable area (BDD100K's direct /
# alternative / background) and lane markings (lane / no lane, YOLOP's form). They join the
# semantic branch with detection and segmentation. SynthDrive writes both in BDD100K's encoding;
# a tree generated before they existed gets their files from `make data`.
_base_ = ["quickstart.py"]

model = dict(
    backbone=dict(
        branches=dict(
            _delete_=True,
            semantic=["det", "seg", "drivable", "lanes"],
            geometric=["depth", "normals"],
        )
    ),
    heads=dict(
        drivable=dict(
            type="SegmentationHead", task="drivable", in_channels=256, channels=64, num_classes=3
        ),
        lanes=dict(
            type="SegmentationHead",
            task="lanes",
            binary=True,
            in_channels=256,
            channels=64,
            num_classes=2,
            # lanes cover ~2.5 % of the pixels: cross-entropy plus a Dice term, which weighs the
            # lane class by its overlap rather than by its pixel count (mmseg's class-weighted
            # cross-entropy indexes its weights with the ignore id, 255, and fails)
            loss_decode=[
                dict(type="mmseg.CrossEntropyLoss", loss_weight=1.0, avg_non_ignore=True),
                dict(type="mmseg.DiceLoss", use_sigmoid=False, loss_weight=1.0),
            ],
        ),
    ),
)
