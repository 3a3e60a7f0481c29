"""Loss weightings against their papers' formulas, computed by hand on short loss sequences."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from adperception.balancing import (
    DWA,
    EqualWeighting,
    GradNorm,
    StaticWeighting,
    TrendWeighting,
    UncertaintyWeighting,
    build_balancer,
)
from adperception.balancing.balancer import GradientBalancer
from adperception.engine.optim_wrapper import MTLOptimWrapper
from tests.balancing.models_for_tests import TASKS, BranchedRegressor, batch

T2 = ("det", "seg")


def test_equal_and_static() -> None:
    losses = torch.tensor([3.0, 0.1])
    assert torch.equal(EqualWeighting(T2).weights(losses), torch.ones(2))
    assert torch.equal(StaticWeighting(T2, dict(seg=0.25)).weights(losses), torch.tensor([1, 0.25]))
    with pytest.raises(ValueError, match="unknown task"):
        StaticWeighting(T2, dict(depth=1.0))


def test_uncertainty_weighting_is_kendalls_objective() -> None:
    weighting = UncertaintyWeighting(T2, init_log_var=dict(det=0.5, seg=-1.0))
    losses = torch.tensor([2.0, 3.0])
    objective = weighting.weights(losses) @ losses + weighting.regulariser()
    expected = sum(0.5 * math.exp(-s) * x + 0.5 * s for s, x in [(0.5, 2.0), (-1.0, 3.0)])
    assert math.isclose(float(objective.detach()), expected, rel_tol=1e-6)


def test_dwa_equal_for_two_epochs_then_softmax_of_loss_ratios() -> None:
    dwa = DWA(T2, temperature=2.0, epoch_iters=2)
    sequence = [[4.0, 2.0], [4.0, 2.0], [2.0, 2.0], [2.0, 2.0], [1.0, 1.0]]
    weights = [dwa.weights(torch.tensor(x)) for x in sequence]
    for w in weights[:4]:  # epochs 0 and 1
        assert torch.equal(w, torch.ones(2))
    ratio = torch.tensor([2.0 / 4.0, 2.0 / 2.0])  # epoch-1 mean over epoch-0 mean
    expected = 2 * torch.softmax(ratio / 2.0, dim=0)
    torch.testing.assert_close(weights[4], expected)
    assert weights[4][1] > weights[4][0]  # the task that stopped improving is pushed up


def test_trend_weighting_pushes_up_the_slowest_task_and_is_equal_at_exponent_zero() -> None:
    sequence = [torch.tensor([1.0, 1.0]) * torch.tensor([0.9**k, 1.0]) for k in range(30)]
    fast_and_flat = TrendWeighting(T2, exponent=1.0, warmup=5)
    flat = TrendWeighting(T2, exponent=0.0, warmup=5)
    for losses in sequence:
        w, w0 = fast_and_flat.weights(losses), flat.weights(losses)
    assert torch.equal(w0, torch.ones(2))
    assert math.isclose(float(w.sum()), 2.0, rel_tol=1e-6)
    assert w[1] > 1.5 > 0.5 > w[0]  # det fell to 0.9^29 ≈ 5%, seg did not move


def test_gradnorm_gradient_is_the_papers_l1_on_weighted_norms() -> None:
    """A weighted step: the weights get ∂/∂w Σ_i |w_i‖∇_W L_i‖ − mean_j(w_j‖∇_W L_j‖)·r_i^α|,
    W the trunk's weight (the last layer all three tasks share), r_i the inverse training rate
    from L(0) of the first step; the weights are T·raw/Σraw."""
    torch.manual_seed(0)
    model = BranchedRegressor(dict(type="GradNorm", alpha=1.5))
    optim_wrapper = MTLOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
    model.train_step(batch(3), optim_wrapper)  # records L(0)
    weighting = model.balancer.weighting
    reference = copy.deepcopy(model)
    data = batch(4)
    losses = reference.loss(data["inputs"], data["data_samples"])
    norms = torch.stack(
        [
            torch.autograd.grad(losses[f"loss_{t}"], reference.trunk.weight, retain_graph=True)[0]
            .double()
            .norm()
            for t in TASKS
        ]
    ).float()
    raw = weighting.raw_weights.detach().clone().requires_grad_(True)
    weighted = 3 * raw / raw.sum() * norms
    ratio = torch.stack([losses[f"loss_{t}"].detach() for t in TASKS]) / weighting.initial.float()
    target = (weighted.mean() * (ratio / ratio.mean()) ** 1.5).detach()
    (expected,) = torch.autograd.grad((weighted - target).abs().sum(), raw)
    before = raw.detach().clone()
    model.train_step(data, optim_wrapper)
    torch.testing.assert_close(before - weighting.raw_weights.detach(), expected)
    assert isinstance(weighting, GradNorm)


def test_build_balancer_wraps_a_weighting_and_defaults_to_escalation() -> None:
    plain = build_balancer(dict(type="UncertaintyWeighting", init_log_var=1.0), T2)
    assert type(plain) is GradientBalancer and plain.active_aggregator() is None
    assert isinstance(plain.weighting, UncertaintyWeighting)
    default = build_balancer(None, T2)
    assert type(default).__name__ == "Escalation"
    assert isinstance(default.weighting, UncertaintyWeighting)
    pcgrad = build_balancer(dict(type="PCGrad", weighting=dict(type="DWA")), T2)
    assert pcgrad.active_aggregator() == "pcgrad" and isinstance(pcgrad.weighting, DWA)


def test_unknown_balancer_arguments_fail_at_build_time() -> None:
    assert build_balancer(dict(type="CAGrad", c=0.2), T2).aggregator_kwargs == dict(c=0.2)
    with pytest.raises(TypeError, match=r"'pcgrad': unknown argument\(s\) \['interval'\]"):
        build_balancer(dict(type="PCGrad", interval=50), T2)
    with pytest.raises(ValueError, match=r"model.balancer.type 'PCGard' is not registered.*PCGrad"):
        build_balancer(dict(type="PCGard"), T2)
    with pytest.raises(TypeError, match="unknown argument"):
        build_balancer(dict(type="Escalation", c=0.4), T2)


def test_a_skipped_non_finite_step_leaves_the_weighting_state_alone() -> None:
    torch.manual_seed(0)
    model = BranchedRegressor(dict(type="TrendWeighting", warmup=1))
    optim_wrapper = MTLOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    model.train_step(batch(0), optim_wrapper)
    state = {k: v.clone() for k, v in model.balancer.state_dict().items()}
    bad = batch(1)
    bad["data_samples"][0, 1] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    model.train_step(bad, optim_wrapper)
    assert optim_wrapper.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    for key, value in model.balancer.state_dict().items():
        if key != "num_steps":
            assert torch.equal(value, state[key]), key
    model.train_step(batch(2), optim_wrapper)
    assert torch.isfinite(model.balancer.weighting.smoothed).all()
