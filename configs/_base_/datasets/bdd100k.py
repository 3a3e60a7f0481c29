# BDD100K (official layout) for detection, drivable area, lane marking and, on the images that the
# 10K sem_seg set shares, segmentation; 70000 train / 10000 val images at 720x1280. The test
# split's labels are not public, so testing uses val.
dataset_type = "BDD100KMTL"
data_root = "data/bdd100k/"
crop_size = (512, 1024)  # (h, w)
train_pipeline = [
    # s = min(1280 / 1280, 720 / 720) * ratio: the full image at 0.5x to 2x, then a 512x1024 crop
    dict(type="RandomResize", scale=(1280, 720), ratio_range=(0.5, 2.0)),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackMTLInputs"),
]
test_pipeline = [
    dict(type="Resize", scale=(1280, 720)),  # s = 1: full resolution
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
