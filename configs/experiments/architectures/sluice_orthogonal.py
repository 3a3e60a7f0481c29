# Sluice networks with their orthogonality penalty (Ruder et al. 2019): the sluice mixing of
# sluice.py plus λ·Σ‖G_1ᵀ G_2‖²_F between every branch's two subspaces at every branched stage
# (the regulariser reg_sluice_orthogonality, added to every update at weight 1 outside the
# balancer's weighting and surgery).
_base_ = ["sluice.py"]
model = dict(backbone=dict(orthogonality_weight=0.1))
