# Hard sharing: the quickstart network with all 4 backbone stages and one FPN shared by the four
# tasks; only the heads are task-specific.
_base_ = ["../../quickstart.py"]
model = dict(
    backbone=dict(
        shared_stages=4, branches=dict(_delete_=True, all=["det", "seg", "depth", "normals"])
    )
)
