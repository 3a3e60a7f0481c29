# Soft sharing (Misra et al. 2016): one whole backbone per task group, as the quickstart's groups
# (semantic: det, seg; geometric: depth, normals), their stage outputs mixed by cross-stitch
# units after every stage, each branch starting at weight 0.9 on itself.
_base_ = ["../../quickstart.py"]
model = dict(
    backbone=dict(type="CrossStitchBackbone", shared_stages=0, adapter=None, init_self=0.9)
)
