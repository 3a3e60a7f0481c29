# NYUv2 as preprocessed by the MTL literature (mtan, LibMTL): 795 train / 654 val images, already
# at 288x384, for segmentation (13 classes), depth and normals.
dataset_type = "NYUv2MTL"
data_root = "data/nyuv2/"
crop_size = (288, 384)  # (h, w)
train_pipeline = [
    # The literature's RandomScaleCrop zooms in by 1.0 to 1.5 and keeps 288x384: here
    # s = min(384 / 384, 288 / 288) * ratio = ratio in [1.0, 1.5], then a 288x384 crop.
    # Never zoom out: that would pad a scene the sensor did see.
    dict(type="RandomResize", scale=(384, 288), ratio_range=(1.0, 1.5)),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackMTLInputs"),
]
test_pipeline = [
    dict(type="Resize", scale=(384, 288)),  # s = 1 on the literature's data
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
