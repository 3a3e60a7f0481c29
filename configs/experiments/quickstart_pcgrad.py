# The quickstart with exact PCGrad at every step (uncertainty-weighted task gradients), for the
# comparison with the amortised variant (quickstart_pcgrad_k8.py) in docs/benchmarks.md.
_base_ = ["../quickstart.py"]
model = dict(
    balancer=dict(
        _delete_=True,
        type="PCGrad",
        weighting=dict(type="UncertaintyWeighting"),
        measure_interval=25,
    )
)
