"""Loss weightings against their papers' formulas, computed by hand on short loss sequences."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from mmengine.config import Config

from adperception.balancing import (
    DWA,
    FAMO,
    RLW,
    EqualWeighting,
    GradNorm,
    LogLossWeighting,
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


@pytest.mark.parametrize(("form", "c"), [("kendall", 0.5), ("unit", 1.0)])
def test_uncertainty_weighting_is_kendalls_objective(form: str, c: float) -> None:
    weighting = UncertaintyWeighting(T2, form=form, init_log_var=dict(det=0.5, seg=-1.0))
    losses = torch.tensor([2.0, 3.0])
    objective = weighting.objective(losses, weighting.weights(losses))
    expected = sum(c * math.exp(-s) * x + c * s for s, x in [(0.5, 2.0), (-1.0, 3.0)])
    assert math.isclose(float(objective.detach()), expected, rel_tol=1e-6)


@pytest.mark.parametrize(("form", "c"), [("kendall", 0.5), ("unit", 1.0)])
def test_uncertainty_weighting_starts_at_weight_one(form: str, c: float) -> None:
    """Every weight is exactly 1 at step 0 (s₀ = log c), and the gradient of the objective
    ``c·e^(−s)·L + c·s`` w.r.t. s is the closed form ``−c·e^(−s)·L + c`` = ``c − L`` there."""
    weighting = UncertaintyWeighting(T2, form=form)
    losses = torch.tensor([2.5, 0.2])
    weights = weighting.weights(losses)
    assert torch.equal(weights.detach(), torch.ones(2))
    (grad,) = torch.autograd.grad(weighting.objective(losses, weights), weighting.log_vars)
    torch.testing.assert_close(grad, c - losses)
    s0 = torch.full((2,), math.log(c))
    torch.testing.assert_close(grad, -c * torch.exp(-s0) * losses + c)
    # an explicit init_log_var=0 keeps the paper's old start, weight c
    old = UncertaintyWeighting(T2, form=form, init_log_var=0.0)
    assert torch.equal(old.weights(losses).detach(), torch.full((2,), c))
    with pytest.raises(ValueError, match="form must be one of"):
        UncertaintyWeighting(T2, form="libmtl")


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
    assert isinstance(default.weighting, FAMO)
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


@pytest.mark.parametrize("kind", ["FAMO", "PCGrad"])
def test_a_new_balancer_type_over_the_escalation_names_the_inherited_arguments(kind: str) -> None:
    """``--cfg-options model.balancer.type=X`` over a base config's Escalation keeps the
    Escalation's arguments (mmengine merges); the error names them and says how to replace
    the dict, and the replacement it names builds."""
    escalation = dict(type="Escalation", patience=5, measure_interval=25)
    cfg = Config(dict(model=dict(balancer=escalation)))
    cfg.merge_from_dict({"model.balancer.type": kind})
    with pytest.raises(TypeError, match=r"\['patience'\].*model\.balancer\._delete_=True"):
        build_balancer(cfg.model.balancer, T2)
    cfg.merge_from_dict({"model.balancer._delete_": True, "model.balancer.type": kind})
    assert cfg.model.balancer == dict(type=kind)
    built = build_balancer(cfg.model.balancer, T2)
    assert built.active_aggregator() == (None if kind == "FAMO" else "pcgrad")
    assert isinstance(built.weighting, FAMO if kind == "FAMO" else EqualWeighting)


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


def famo_reference(sequence: list[torch.Tensor], lr: float, decay: float) -> list[torch.Tensor]:
    """Alg. 1 of Liu et al. as the authors' code writes it: the weights are T × the gradient of
    ``Σ_i z_i log L_i / c`` with respect to the losses, c = Σ_j z_j / L_j held constant; ξ
    takes torch's Adam (weight decay γ) on ``∂(zᵀδ)/∂ξ`` by autograd; L(t) of each step is the
    next step's loss."""
    T = len(sequence[0])
    xi = torch.zeros(T, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([xi], lr=lr, weight_decay=decay)
    weights, previous = [], None
    for losses in sequence:
        losses = losses.double() + 1e-8
        if previous is not None:
            delta = previous.log() - losses.log()
            (xi.grad,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)
            optimizer.step()
        previous = losses
        z = torch.softmax(xi, 0).detach()
        leaf = losses.clone().requires_grad_(True)
        c = (z / leaf).sum().detach()
        (grad,) = torch.autograd.grad((leaf.log() * z / c).sum(), leaf)
        weights.append(T * grad)
    return weights


def famo_losses(steps: int = 40) -> list[torch.Tensor]:
    """Three tasks: one falls fast, one slowly, one is flat with noise."""
    noise = torch.rand(steps, generator=torch.Generator().manual_seed(0))
    return [
        torch.tensor([2.0 * 0.9**k, 1.0 * 0.99**k, 0.5 + 0.01 * float(noise[k])])
        for k in range(steps)
    ]


def test_famo_is_algorithm_one() -> None:
    sequence = famo_losses()
    famo = FAMO(TASKS, lr=0.025, decay=0.01)
    weights = [famo.weights(losses.float()) for losses in sequence]
    expected = famo_reference(sequence, lr=0.025, decay=0.01)
    for w, e in zip(weights, expected, strict=True):
        torch.testing.assert_close(w.double(), e, rtol=1e-6, atol=0)
    assert all(math.isclose(float(w.sum()), 3.0, rel_tol=1e-6) for w in weights)
    # the task whose log loss falls slowest gains logit, the fastest loses it
    assert famo.logits[2] > famo.logits[1] > famo.logits[0]


def test_famo_resumes_from_its_state_dict() -> None:
    sequence = famo_losses(12)
    famo = FAMO(TASKS)
    for losses in sequence[:6]:
        famo.weights(losses)
    resumed = FAMO(TASKS)
    resumed.load_state_dict(famo.state_dict())
    for losses in sequence[6:]:
        assert torch.equal(resumed.weights(losses), famo.weights(losses))
    with pytest.raises(ValueError, match="negative"):
        famo.weights(torch.tensor([1.0, -0.1, 1.0]))


def test_rlw_is_a_softmax_of_standard_normals() -> None:
    """log w_i − mean_j log w_j = z_i − z̄ for z ~ N(0, I): mean 0, variance 1 − 1/T, and
    independent of the losses; the weights sum to T."""
    rlw = RLW(TASKS, sample_seed=3)
    draws = torch.stack([rlw.weights(torch.rand(3)).double() for _ in range(4000)])
    torch.testing.assert_close(draws.sum(1), torch.full((4000,), 3.0).double())
    centred = draws.log() - draws.log().mean(1, keepdim=True)
    assert centred.mean(0).abs().max() < 0.05
    torch.testing.assert_close(centred.var(0), torch.full((3,), 2 / 3).double(), rtol=0.08, atol=0)
    assert abs(float(torch.corrcoef(centred.T)[0, 1]) + 0.5) < 0.05  # z_i − z̄ correlate −½


def test_rlw_draws_agree_across_instances_and_resume() -> None:
    """The same sample_seed draws the same weights (what every rank does); a resumed run
    continues the sequence; another seed draws others."""
    losses = torch.ones(3)
    a, b, other = RLW(TASKS), RLW(TASKS), RLW(TASKS, sample_seed=1)
    first = [a.weights(losses) for _ in range(5)]
    assert all(torch.equal(x, b.weights(losses)) for x in first)
    assert not torch.equal(first[0], other.weights(losses))
    resumed = RLW(TASKS)
    resumed.load_state_dict(a.state_dict())
    assert torch.equal(resumed.weights(losses), a.weights(losses))
    assert not torch.equal(first[-1], a.weights(losses))


def test_log_loss_weighting_trains_on_the_log_losses() -> None:
    """DB-MTL's loss-scale balancing: the weighted loss's gradient is that of Σ_i log L_i."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.randn(5, 3)
    losses = ((layer(x) - y) ** 2).mean(0) * torch.tensor([1.0, 100.0, 0.01])
    weighting = LogLossWeighting(TASKS)
    objective = weighting.weights(losses.detach()) @ losses
    (weighted,) = torch.autograd.grad(objective, layer.weight, retain_graph=True)
    (log,) = torch.autograd.grad(losses.log().sum(), layer.weight)
    torch.testing.assert_close(weighted, log, rtol=1e-5, atol=0)
