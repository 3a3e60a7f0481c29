# The quickstart's partial sharing with task-specific normalisation (Maninis et al. 2019): every
# norm layer of the two shared stages has one copy per task group, so the shared stages run
# once per group.
_base_ = ["../../quickstart.py"]
model = dict(backbone=dict(task_norms=True))
