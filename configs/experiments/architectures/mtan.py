# MTAN (Liu et al. 2019): the whole backbone shared, one attention network per task over the
# shared maps of every stage, one FPN per task (detection's from stride 8, the maps DINO reads).
_base_ = ["../../quickstart.py"]
model = dict(
    backbone=dict(
        type="TaskAttentionBackbone",
        shared_stages=4,
        adapter=None,
        branches=dict(
            _delete_=True, det=["det"], seg=["seg"], depth=["depth"], normals=["normals"]
        ),
    ),
    group_necks=dict(det=dict(start_level=1, num_outs=3)),
)
