# Cityscapes (official layout) for detection, segmentation and depth; 2975 train / 500 val images
# at 1024x2048. The test split's public labels are all zero, so testing uses val (as mmseg does).
dataset_type = "CityscapesMTL"
data_root = "data/cityscapes/"
crop_size = (512, 1024)  # (h, w)
train_pipeline = [
    # s = min(2048 / 2048, 1024 / 1024) * ratio: the full image at 0.5x to 2x, then a 512x1024 crop
    dict(type="RandomResize", scale=(2048, 1024), ratio_range=(0.5, 2.0)),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackMTLInputs"),
]
test_pipeline = [
    dict(type="Resize", scale=(2048, 1024)),  # s = 1: full resolution
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
