# mnist.py with the parity loss multiplied by 100, as digits_imbalanced.py does for the digits:
# the same two tasks, but one loss dominates the sum by construction, which a balancer has to undo.
_base_ = ["mnist.py"]
model = dict(loss_scale=dict(parity=100.0))
# Hand-set as in mnist.py: 1 / the initial loss, now 100 × ln 2 ≈ 69.3 for parity.
methods = dict(StaticWeighting=dict(weights=dict(parity=0.0144)))
