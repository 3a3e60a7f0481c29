"""The optimizer step of every kind of training step: one skip counter for all of them, the
balancer's parameters out of weight decay and clipping, accumulation refused where it cannot
work."""

from __future__ import annotations

import math

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

import adperception.engine  # noqa: F401  (registers the wrapper and its constructor)
from adperception.engine.optim_wrapper import MTLOptimWrapper, NonFiniteLossError
from tests.balancing.models_for_tests import TASKS, BranchedRegressor, batch


def build(model: torch.nn.Module, **cfg) -> MTLOptimWrapper:
    cfg = {"type": "MTLOptimWrapper", "constructor": "MTLOptimWrapperConstructor", **cfg}
    with DefaultScope.overwrite_default_scope("adperception"):
        return build_optim_wrapper(model, cfg)


def nan_batch(seed: int) -> dict[str, torch.Tensor]:
    data = batch(seed)
    data["data_samples"][:, 0] = math.nan  # task a's loss is NaN
    return data


@pytest.mark.parametrize("balancer", ["PCGrad", "EqualWeighting", "GradNorm"])
def test_every_kind_of_step_resets_the_count_of_consecutive_skips(balancer: str) -> None:
    """NaN every other step never stops the run, whatever path the good steps take (per-task
    surgery, the weighted step, GradNorm's); three NaN steps in a row do."""
    torch.manual_seed(0)
    model = BranchedRegressor(dict(type=balancer))
    wrapper = build(model, optimizer=dict(type="SGD", lr=0.01), max_consecutive_nonfinite=3)
    for step in range(9):
        model.train_step(nan_batch(step) if step % 2 else batch(step), wrapper)
    assert wrapper.skipped_steps == 4
    model.train_step(nan_batch(20), wrapper)
    model.train_step(nan_batch(21), wrapper)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        model.train_step(nan_batch(22), wrapper)


def test_a_skipped_step_changes_nothing_and_is_logged() -> None:
    torch.manual_seed(0)
    model = BranchedRegressor(dict(type="PCGrad"))
    wrapper = build(model, optimizer=dict(type="SGD", lr=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log_vars = model.train_step(nan_batch(0), wrapper)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert log_vars["nonfinite.a"] == 1.0
    assert "loss_a" not in log_vars and "loss" not in log_vars  # no NaN in the logged averages
    assert {"loss_b", "loss_c"} <= set(log_vars)
    assert int(model.balancer.num_steps) == 1


@pytest.mark.parametrize("paramwise", [False, True])
def test_balancer_parameters_get_no_weight_decay(paramwise: bool) -> None:
    model = BranchedRegressor(dict(type="UncertaintyWeighting"))
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.1))
    if paramwise:
        cfg["paramwise_cfg"] = dict(custom_keys={"trunk": dict(lr_mult=0.5)})
    wrapper = build(model, **cfg)
    log_vars = model.balancer.weighting.log_vars
    decay = {
        id(p): group["weight_decay"] for group in wrapper.param_groups for p in group["params"]
    }
    assert decay[id(log_vars)] == 0.0
    assert decay[id(model.trunk.weight)] == pytest.approx(0.1)
    assert {id(p) for p in model.parameters()} <= set(decay)  # every parameter is optimised


def test_per_task_optimizer_groups_set_each_head_and_branch_rate_and_decay() -> None:
    """custom_keys per head and per branch: the head of a, the branch of c and the trunk each
    get their own learning rate and weight decay, the rest the optimizer's."""
    model = BranchedRegressor(dict(type="EqualWeighting"))
    keys = {
        "heads.a": dict(lr_mult=0.25, decay_mult=0.0),
        "branch_c": dict(lr_mult=2.0),
        "trunk": dict(lr_mult=0.1, decay_mult=2.0),
    }
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.1))
    wrapper = build(model, **cfg, paramwise_cfg=dict(custom_keys=keys))
    settings = {
        id(p): (group["lr"], group["weight_decay"])
        for group in wrapper.param_groups
        for p in group["params"]
    }
    expected = {
        model.heads["a"].weight: (2.5e-4, 0.0),
        model.heads["b"].weight: (1e-3, 0.1),
        model.branch_c.weight: (2e-3, 0.1),
        model.branch_ab.weight: (1e-3, 0.1),
        model.trunk.weight: (1e-4, 0.2),
    }
    for param, (lr, decay) in expected.items():
        assert settings[id(param)] == (pytest.approx(lr), pytest.approx(decay))


def test_an_optimizer_key_that_names_no_parameter_is_named() -> None:
    """mmengine matches custom_keys as substrings and ignores a key that matches nothing: a
    misspelt head name would silently train at the base rate."""
    model = BranchedRegressor(dict(type="EqualWeighting"))
    cfg = dict(optimizer=dict(type="SGD", lr=0.1))
    with pytest.warns(UserWarning, match=r"\['heads.d'\] match no parameter.*'heads.a'"):
        build(model, **cfg, paramwise_cfg=dict(custom_keys={"heads.d": dict(lr_mult=0.5)}))


def test_balancer_parameters_are_not_clipped() -> None:
    """Under a tight clip the network's update is clipped to the bound while the
    log-variances move by their full gradient, -½·e^(-s)·L_i + ½ = -L_i + ½ at the start
    (s = log ½, weight 1; SGD with lr 1)."""
    torch.manual_seed(0)
    model = BranchedRegressor(dict(type="UncertaintyWeighting"))
    wrapper = build(
        model, optimizer=dict(type="SGD", lr=1.0), clip_grad=dict(max_norm=1e-3, norm_type=2)
    )
    data = batch(3)
    losses = model.loss(data["inputs"], data["data_samples"])
    expected = torch.stack([-losses[f"loss_{t}"].detach() + 0.5 for t in TASKS])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train_step(data, wrapper)
    moved = {n: before[n] - p.detach() for n, p in model.named_parameters()}
    torch.testing.assert_close(moved.pop("balancer.weighting.log_vars"), expected)
    network = torch.cat([m.reshape(-1) for m in moved.values()]).norm()
    assert float(network) == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize("balancer", ["PCGrad", "Escalation"])
def test_accumulation_is_refused_with_per_task_steps(balancer: str) -> None:
    model = BranchedRegressor(dict(type=balancer))
    with pytest.raises(ValueError, match="accumulative_counts=2 cannot be combined"):
        build(model, optimizer=dict(type="SGD", lr=0.1), accumulative_counts=2)


def test_accumulation_with_a_plain_weighting_equals_the_doubled_batch() -> None:
    """Two micro-batches of 4 accumulated give the step of the batch of 8 (mean losses)."""
    results = []
    for counts, parts in ((2, 2), (1, 1)):
        torch.manual_seed(0)
        model = BranchedRegressor(dict(type="EqualWeighting"))
        wrapper = build(model, optimizer=dict(type="SGD", lr=0.5), accumulative_counts=counts)
        wrapper.initialize_count_status(model, 0, 2)
        full = batch(4, size=8)
        for k in range(parts):
            size = 8 // parts
            part = {key: v[k * size : (k + 1) * size] for key, v in full.items()}
            model.train_step(part, wrapper)
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for name, value in results[1].items():
        torch.testing.assert_close(results[0][name], value, msg=name)


def test_a_model_with_a_balancer_needs_the_mtl_wrapper() -> None:
    model = BranchedRegressor(dict(type="PCGrad"))
    with pytest.raises(TypeError, match="needs MTLOptimWrapper"):
        build(model, type="OptimWrapper", optimizer=dict(type="SGD", lr=0.1))


def test_the_schedules_fused_adamw_steps_as_the_per_parameter_loop() -> None:
    """The base schedule's AdamW is torch's fused kernel; over our parameter groups (a learning
    rate multiplier, the balancer's parameters without decay) and gradient clipping, its steps
    equal those of torch's per-parameter reference loop."""
    cfg = Config.fromfile("configs/_base_/schedules/iter_40k.py").optim_wrapper.to_dict()
    assert cfg["optimizer"]["fused"] is True
    cfg["paramwise_cfg"] = dict(custom_keys={"trunk": dict(lr_mult=0.1)})
    cfg["optimizer"]["lr"] = 0.05
    trained = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = BranchedRegressor(dict(type="UncertaintyWeighting"))
        initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        wrapper = build(model, **{**cfg, "optimizer": {**cfg["optimizer"], "fused": fused}})
        assert wrapper.optimizer.defaults["fused"] is fused
        for step in range(5):
            model.train_step(batch(step), wrapper)
        params = {n: p.detach() for n, p in model.named_parameters()}
        assert all(not torch.equal(initial[n], p) for n, p in params.items())  # all trained
        trained.append(params)
    fused_params, loop_params = trained
    for name, param in fused_params.items():
        torch.testing.assert_close(param, loop_params[name], rtol=1e-5, atol=1e-6, msg=name)
