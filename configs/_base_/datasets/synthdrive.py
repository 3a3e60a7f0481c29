# SynthDrive, our generated scenes in the Cityscapes layout plus normals, at 256x512 (Cityscapes'
# 1024x2048 divided by 4 per side, 1/16 of the pixels), so all four tasks train on a CPU.
dataset_type = "SynthDrive"
data_root = "data/synthdrive/"
crop_size = (256, 512)  # (h, w)
train_pipeline = [
    # s = min(512 / 512, 256 / 256) * ratio: the full image at 0.5x to 2x, then a 256x512 crop
    dict(type="RandomResize", scale=(512, 256), ratio_range=(0.5, 2.0)),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackMTLInputs"),
]
test_pipeline = [
    dict(type="Resize", scale=(512, 256)),
    dict(type="PackMTLInputs"),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, split="train", pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, split="val", pipeline=test_pipeline),
)
test_dataloader = val_dataloader
