# Sluice mixing (Ruder et al. 2019): the cross-stitch network with every branch's channels split
# into 2 subspaces and all (branch, subspace) pairs mixed.
_base_ = ["cross_stitch.py"]
model = dict(backbone=dict(subspaces=2))
