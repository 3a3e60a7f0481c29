# The quickstart with PCGrad amortised over 8 steps: the Gram matrix of the task gradients every
# 8th step, its task weights applied by one weighted backward in between.
_base_ = ["quickstart_pcgrad.py"]
model = dict(balancer=dict(surgery_interval=8))
