# ad_mtl with ConvNeXt-T (timm convnext_tiny) instead of Swin-T; everything else as ad_mtl.py.
_base_ = ["ad_mtl.py"]
model = dict(backbone=dict(model_name="convnext_tiny", drop_path_rate=0.2))
