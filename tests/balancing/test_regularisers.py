"""A model's regularisers (``reg_<name>`` losses of no task) on every kind of training step: the
update is the balancer's update of the task losses alone plus the regulariser's own gradient,
at weight 1, outside the weighting and the surgery."""

from __future__ import annotations

import copy

import pytest
import torch
from mmengine.logging import MessageHub

from adperception.engine.optim_wrapper import MTLOptimWrapper
from tests.balancing.models_for_tests import BranchedRegressor, RegularisedRegressor, batch


def _pair(balancer: dict, warmup: list[int]) -> tuple[BranchedRegressor, RegularisedRegressor]:
    """The regularised model after steps on ``batch(seed)`` for ``warmup`` and the plain model
    in the same state (weights and the balancer's buffers: step count, stored coefficients)."""
    torch.manual_seed(0)
    regularised = RegularisedRegressor(balancer)
    optim_wrapper = MTLOptimWrapper(optimizer=torch.optim.SGD(regularised.parameters(), lr=1.0))
    for seed in warmup:
        regularised.train_step(batch(seed), optim_wrapper)
    plain = BranchedRegressor(balancer)
    plain.load_state_dict(regularised.state_dict())
    return plain, regularised


def _step(model: BranchedRegressor, seed: int) -> dict[str, torch.Tensor]:
    """``param - new_param`` after one step on ``batch(seed)`` (SGD, lr 1)."""
    optim_wrapper = MTLOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train_step(batch(seed), optim_wrapper)
    return {n: before[n] - p.detach() for n, p in model.named_parameters()}


def _regulariser_gradient(model: RegularisedRegressor, seed: int) -> dict[str, torch.Tensor]:
    """∇ of ``strength · mean(tanh(trunk(x))²)`` by autograd on a copy; zero off the trunk."""
    reference = copy.deepcopy(model)
    value = reference.strength * torch.tanh(reference.trunk(batch(seed)["inputs"])).square().mean()
    named = list(reference.named_parameters())
    grads = torch.autograd.grad(value, [p for _, p in named], allow_unused=True)
    return {
        n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named, grads, strict=True)
    }


@pytest.mark.parametrize(
    ("balancer", "warmup", "kind"),
    [
        (dict(type="StaticWeighting", weights=dict(a=1.0, b=2.0, c=0.5)), [], "weighted"),
        (dict(type="PCGrad", seed=5), [], "task_gradients"),
        (dict(type="IMTLG", surgery_interval=3), [2], "amortised"),
        (dict(type="UncertaintyWeighting", measure_interval=1), [2], "task_gradients"),
    ],
)
def test_a_regulariser_adds_its_own_gradient_to_every_kind_of_step(
    balancer: dict, warmup: list[int], kind: str
) -> None:
    plain, regularised = _pair(balancer, warmup)
    assert regularised.balancer.plan(regularised) == kind
    expected = _regulariser_gradient(regularised, 3)
    assert float(expected["trunk.weight"].abs().max()) > 1e-3
    assert not expected["branch_ab.weight"].any()
    without, with_regulariser = _step(plain, 3), _step(regularised, 3)
    for name, value in without.items():
        torch.testing.assert_close(
            with_regulariser[name], value + expected[name], rtol=1e-5, atol=1e-6, msg=name
        )


def test_a_non_finite_regulariser_skips_the_step_and_is_named() -> None:
    _, model = _pair(dict(type="PCGrad"), [])
    model.strength = float("nan")
    hub = MessageHub.get_current_instance()
    before_count = hub.get_info("nonfinite/reg_activity", 0)
    optim_wrapper = MTLOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log = model.train_step(batch(4), optim_wrapper)
    assert "nonfinite.reg_activity" in log
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert hub.get_info("nonfinite/reg_activity", 0) == before_count + 1


def test_the_logged_loss_counts_the_regulariser() -> None:
    _, model = _pair(dict(type="EqualWeighting"), [])
    optim_wrapper = MTLOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
    log = model.train_step(batch(4), optim_wrapper)
    tasks = sum(float(log[f"loss_{t}"]) for t in model.tasks)
    assert float(log["loss"]) == pytest.approx(tasks + float(log["reg_activity"]))
    assert float(log["reg_activity"]) > 0
