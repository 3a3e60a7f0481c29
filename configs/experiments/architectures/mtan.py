# MTAN (Liu et al. 2019): the whole backbone shared, one attention network per task over the
# shared maps of every stage, one FPN per task.
_base_ = ["../../quickstart.py"]
model = dict(
    backbone=dict(
        type="TaskAttentionBackbone",
        shared_stages=4,
        adapter=None,
        branches=dict(
            _delete_=True, det=["det"], seg=["seg"], depth=["depth"], normals=["normals"]
        ),
    )
)
