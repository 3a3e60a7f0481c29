"""The balancer's training step against gradients computed independently, task by task.

The reference takes each task's full gradient with ``torch.autograd.grad`` on a copy of the
model, applies ``functional``'s aggregator to each sharing group's matrix and plain weighting to
everything else, and one SGD step (lr 1) turns that into the expected parameters.
"""

from __future__ import annotations

import copy
import io
import logging

import pytest
import torch
from mmengine.logging import MessageHub, MMLogger
from mmengine.optim import OptimWrapper

from adperception.balancing import build_balancer, functional
from adperception.engine.optim_wrapper import MTLAmpOptimWrapper, MTLOptimWrapper
from tests.balancing.models_for_tests import TASKS, BranchedRegressor, batch, tie_tasks


def make(
    balancer: dict | None, seed: int = 0, record_head_inputs: bool = False
) -> tuple[BranchedRegressor, OptimWrapper]:
    torch.manual_seed(seed)
    model = BranchedRegressor(balancer, record_head_inputs=record_head_inputs)
    return model, MTLOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=1.0))


def reference_update(
    model: BranchedRegressor,
    data: dict,
    weights: torch.Tensor,
    aggregate,
) -> dict[str, torch.Tensor]:
    """Expected ``param - new_param`` after one step of lr 1, computed without the balancer."""
    reference = copy.deepcopy(model)
    losses = reference.loss(data["inputs"], data["data_samples"])
    named = [(n, p) for n, p in reference.named_parameters() if not n.startswith("balancer.")]
    per_task = {}
    for i, task in enumerate(TASKS):
        grads = torch.autograd.grad(
            weights[i] * losses[f"loss_{task}"],
            [p for _, p in named],
            retain_graph=True,
            allow_unused=True,
        )
        per_task[task] = {
            n: torch.zeros_like(p) if g is None else g
            for (n, p), g in zip(named, grads, strict=True)
        }
    layout = model.balancer.layout(model)
    names = {id(p): n for n, p in model.named_parameters()}
    expected = {n: torch.zeros_like(p) for n, p in named}
    for group in layout.groups:
        group_names = [names[id(p)] for p in group.params]
        rows = torch.stack(
            [torch.cat([per_task[t][n].reshape(-1) for n in group_names]) for t in group.tasks]
        )
        update = aggregate(group, rows)
        pieces = update.split([per_task["a"][n].numel() for n in group_names])
        for name, piece in zip(group_names, pieces, strict=True):
            expected[name] = piece.view_as(expected[name])
    for task, params in layout.private.items():
        for param in params:
            expected[names[id(param)]] = per_task[task][names[id(param)]]
    return expected


def step_and_diff(model, optim_wrapper, data) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train_step(data, optim_wrapper)
    return {n: before[n] - p.detach() for n, p in model.named_parameters()}


def assert_updates(actual: dict, expected: dict, atol: float = 1e-6) -> None:
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-5, atol=atol, msg=name)


def test_layout_of_the_branched_regressor() -> None:
    model, _ = make(dict(type="PCGrad"))
    layout = model.balancer.layout(model)
    assert [g.name for g in layout.groups] == ["a+b", "a+b+c"]  # largest first
    assert layout.groups[1].params == tuple(model.trunk.parameters())
    private_c = {*model.branch_c.parameters(), *model.heads["c"].parameters()}
    assert set(layout.private["c"]) == private_c


@pytest.mark.parametrize(
    ("aggregator", "name"),
    [
        ("PCGrad", "pcgrad"),
        ("MGDA", "mgda"),
        ("IMTLG", "imtl_g"),
        ("CAGrad", "cagrad"),
        ("NashMTL", "nash_mtl"),
    ],
)
def test_exact_surgery_per_sharing_group_with_static_weights(aggregator: str, name: str) -> None:
    weighting = dict(type="StaticWeighting", weights=dict(a=1.0, b=2.0, c=0.5))
    model, optim_wrapper = make(dict(type=aggregator, weighting=weighting, seed=7))
    data = batch(1)
    generator = torch.Generator().manual_seed(7)  # the balancer's seed + step 0, groups in order

    def aggregate(group, rows):
        kwargs = {"generator": generator} if name == "pcgrad" else {}
        a = functional.AGGREGATORS[name](rows.double() @ rows.double().T, **kwargs)
        return a.to(rows) @ rows

    expected = reference_update(model, data, torch.tensor([1.0, 2.0, 0.5]), aggregate)
    assert_updates(step_and_diff(model, optim_wrapper, data), expected)


def test_pcgrad_projects_away_the_conflict_in_each_group() -> None:
    model, optim_wrapper = make(dict(type="PCGrad"))
    model.train_step(batch(2), optim_wrapper)
    stats = model.balancer.stats
    gram = stats.groups["a+b"].gram
    assert gram[0, 1] < 0  # the constructed targets conflict on branch_ab
    a = stats.groups["a+b"].aggregator_weights.double()
    update_dot_task = gram @ a  # ⟨Σ_j a_j g_j, g_i⟩
    assert (update_dot_task >= -1e-9).all()


def test_chunked_task_gradients_give_the_same_update() -> None:
    results = []
    for chunk_numel in (None, 10):
        model, optim_wrapper = make(dict(type="PCGrad", chunk_numel=chunk_numel, seed=3))
        results.append(step_and_diff(model, optim_wrapper, batch(4)))
        peak = model.balancer.peak_task_gradient_bytes
        if chunk_numel is None:
            full = peak
    assert peak < full  # at most T × (one 10-element chunk + the largest tensor) held
    assert_updates(results[1], results[0])


def imtl_g_by_definition(rows: torch.Tensor) -> torch.Tensor:
    """IMTL-G's weights from its definition, not from ``functional``: Σ a_j = 1, and the update
    d = Σ a_j g_j projects equally onto every unit task gradient u_i (d·u_i = d·u_1), a linear
    system in a."""
    G = rows.double()
    projections = G @ (G / G.norm(dim=1, keepdim=True)).T  # [j, i] = g_j · u_i
    system = torch.stack([projections[:, i] - projections[:, 0] for i in range(1, len(G))])
    system = torch.cat([system, torch.ones(1, len(G), dtype=torch.float64)])
    rhs = torch.zeros(len(G), dtype=torch.float64)
    rhs[-1] = 1.0
    return torch.linalg.solve(system, rhs)


@pytest.mark.parametrize("record_head_inputs", [False, True])
def test_amortised_steps_reuse_each_groups_weights_on_its_shared_parameters_only(
    record_head_inputs: bool,
) -> None:
    """Between surgery steps each sharing group's parameters get that group's own last weights
    on the new gradients, and the task-private heads their plain weighted gradient, exactly as
    on a surgery step; from the group backwards, or from the inputs the heads read."""
    weights = torch.tensor([1.0, 2.0, 0.5])
    weighting = dict(type="StaticWeighting", weights=dict(a=1.0, b=2.0, c=0.5))
    model, optim_wrapper = make(
        dict(type="IMTLG", weighting=weighting, surgery_interval=3),
        record_head_inputs=record_head_inputs,
    )
    coefficients: dict[str, torch.Tensor] = {}

    def surgery(group, rows):
        coefficients[group.name] = imtl_g_by_definition(rows)
        return coefficients[group.name].to(rows) @ rows

    data = batch(5)
    expected = reference_update(model, data, weights, surgery)
    assert_updates(step_and_diff(model, optim_wrapper, data), expected)
    assert set(coefficients) == {"a+b", "a+b+c"}
    assert not torch.allclose(coefficients["a+b"], coefficients["a+b+c"][:2].double())
    for step in (1, 2):
        assert model.balancer.plan(model) == "amortised"
        data = batch(5 + step)
        expected = reference_update(
            model, data, weights, lambda group, rows: coefficients[group.name].to(rows) @ rows
        )
        assert_updates(step_and_diff(model, optim_wrapper, data), expected)
    assert model.balancer.plan(model) == "task_gradients"


def _count_backwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    grad = torch.autograd.grad

    def counted(*args, **kwargs):
        calls.append(1)
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    return calls


def test_an_amortised_step_takes_one_backward_per_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """The heads' gradients come from the group backwards (divided by the task's coefficient):
    two groups, two backwards, and the update of the reference."""
    model, optim_wrapper = make(dict(type="IMTLG", surgery_interval=3))
    model.train_step(batch(5), optim_wrapper)
    coefficients = {
        g.name: model.balancer.coefficients_of(g.tasks) for g in model.balancer.layout(model).groups
    }
    data = batch(6)
    expected = reference_update(
        model,
        data,
        torch.ones(3),
        lambda group, rows: coefficients[group.name].to(rows) @ rows,
    )
    calls = _count_backwards(monkeypatch)
    assert model.balancer.plan(model) == "amortised"
    assert_updates(step_and_diff(model, optim_wrapper, data), expected)
    assert len(calls) == 2


@pytest.mark.parametrize(("record_head_inputs", "passes"), [(False, [2, 2, 1]), (True, [1, 1, 1])])
def test_an_amortised_step_from_the_head_inputs_passes_through_each_head_once(
    record_head_inputs: bool, passes: list[int]
) -> None:
    """The group backwards of the re-weighted losses pass again through every head of their
    group (a and b: in {a, b, c}'s and in {a, b}'s); from the recorded head inputs each head
    is passed once, for the same update."""
    model, optim_wrapper = make(
        dict(type="IMTLG", surgery_interval=3), record_head_inputs=record_head_inputs
    )
    model.train_step(batch(5), optim_wrapper)
    coefficients = {
        g.name: model.balancer.coefficients_of(g.tasks) for g in model.balancer.layout(model).groups
    }
    data = batch(6)
    expected = reference_update(
        model, data, torch.ones(3), lambda group, rows: coefficients[group.name].to(rows) @ rows
    )
    model.head_passes = dict.fromkeys(TASKS, 0)
    assert model.balancer.plan(model) == "amortised"
    assert_updates(step_and_diff(model, optim_wrapper, data), expected)
    assert list(model.head_passes.values()) == passes
    assert model.head_inputs is None  # handed to the balancer and dropped


def test_a_task_at_coefficient_zero_gets_its_heads_gradient_from_its_own_backward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Task b weighs 0 in both groups: dividing by its coefficient is impossible, so its
    private parameters take one more backward, and still get their plain gradient."""
    model, optim_wrapper = make(dict(type="IMTLG", surgery_interval=3))
    model.train_step(batch(5), optim_wrapper)
    zero_b = {"a+b": torch.tensor([0.7, 0.0]), "a+b+c": torch.tensor([1.2, 0.0, 0.4])}
    for group in model.balancer.layout(model).groups:
        model.balancer._store_coefficients(group.tasks, zero_b[group.name].double())
    data = batch(6)
    expected = reference_update(
        model, data, torch.ones(3), lambda group, rows: zero_b[group.name].to(rows) @ rows
    )
    assert expected["heads.b.weight"].abs().max() > 1e-3
    calls = _count_backwards(monkeypatch)
    assert_updates(step_and_diff(model, optim_wrapper, data), expected)
    assert len(calls) == 3


def test_amortised_weights_survive_a_checkpoint() -> None:
    model, optim_wrapper = make(dict(type="MGDA", surgery_interval=4))
    model.train_step(batch(5), optim_wrapper)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    resumed, resumed_wrapper = make(dict(type="MGDA", surgery_interval=4), seed=1)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.balancer.plan(resumed) == "amortised"
    for group in model.balancer.layout(model).groups:
        a = model.balancer.coefficients_of(group.tasks)
        assert a is not None
        torch.testing.assert_close(resumed.balancer.coefficients_of(group.tasks), a)
    assert_updates(
        step_and_diff(resumed, resumed_wrapper, batch(6)),
        step_and_diff(model, optim_wrapper, batch(6)),
    )


def test_measurement_step_changes_nothing_for_a_plain_weighting() -> None:
    """Uncertainty weighting with and without per-task gradients: the same step, log-variances
    included (their gradient is -½e^(-s)·L + ½)."""
    updates = []
    for measure in (False, True):
        cfg = dict(type="UncertaintyWeighting", init_log_var=0.3)
        model, optim_wrapper = make({**cfg, "measure_interval": 1 if measure else None})
        data = batch(7)
        losses = model.loss(data["inputs"], data["data_samples"])
        assert model.balancer.plan(model) == ("task_gradients" if measure else "weighted")
        updates.append(step_and_diff(model, optim_wrapper, data))
        expected_s = torch.stack(
            [
                -0.5 * torch.exp(torch.tensor(-0.3)) * losses[f"loss_{t}"].detach() + 0.5
                for t in TASKS
            ]
        )
        torch.testing.assert_close(updates[-1]["balancer.weighting.log_vars"], expected_s)
    assert_updates(updates[1], updates[0])


def escalation(**kwargs) -> dict:
    return {"type": "Escalation", "measure_interval": 1, "momentum": 0.5, "patience": 2, **kwargs}


def worst_conflict_strength(stats) -> float:
    """From each group's Gram matrix, by the definition: the mean over task pairs of
    max(0, −cos), the worst group's."""
    worst = 0.0
    for group in stats.groups.values():
        K = group.gram.double()
        n = len(group.tasks)
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        cos = [float(K[i, j] / (K[i, i] * K[j, j]).sqrt()) for i, j in pairs]
        worst = max(worst, sum(max(0.0, -c) for c in cos) / len(pairs))
    return worst


def test_escalation_switches_to_pcgrad_on_conflict_and_survives_a_checkpoint() -> None:
    model, optim_wrapper = make(escalation(conflict_threshold=0.05, imbalance_threshold=1e9))
    balancer = model.balancer
    ema = 0.0
    for step in range(2):
        model.train_step(batch(10 + step), optim_wrapper)
        ema = 0.5 * ema + 0.5 * worst_conflict_strength(balancer.stats)
        assert float(balancer.conflict.ema) == pytest.approx(ema)
    assert bool(balancer.escalated) and int(balancer.escalated_at) == 1  # 2 above 0.05
    assert not bool(balancer.imbalance.switched)
    assert balancer.active_aggregator() == "pcgrad"
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    resumed, _ = make(escalation(conflict_threshold=0.05, imbalance_threshold=1e9))
    assert not bool(resumed.balancer.escalated)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert bool(resumed.balancer.escalated) and int(resumed.balancer.escalated_at) == 1
    assert resumed.balancer.active_aggregator() == "pcgrad"
    assert resumed.balancer.plan(resumed) == "task_gradients"


def test_escalation_equalises_the_norms_when_one_task_dominates() -> None:
    """Task c weighted 20: its gradient dwarfs a's and b's on the trunk (a norm ratio of ~400 at
    the second step). Once switched, every group's update is the sum of its task gradients
    rescaled to their mean norm."""
    weighting = dict(type="StaticWeighting", weights=dict(c=20.0))
    cfg = escalation(
        weighting=weighting, conflict_threshold=1e9, imbalance_threshold=1.0, patience=1
    )
    model, optim_wrapper = make(cfg)
    for step in range(2):
        model.train_step(batch(10 + step), optim_wrapper)
    balancer = model.balancer
    assert bool(balancer.imbalance.switched) and not bool(balancer.conflict.switched)
    assert balancer.active_aggregator() == "equal_norm"

    def equalised(group, rows):
        norms = rows.double().norm(dim=1)
        return ((norms.mean() / norms)[:, None] * rows.double()).sum(0).to(rows)

    data = batch(12)
    expected = reference_update(model, data, torch.tensor([1.0, 1.0, 20.0]), equalised)
    assert_updates(step_and_diff(model, optim_wrapper, data), expected, atol=1e-5)


def test_escalation_applies_both_remedies_when_both_symptoms_persist() -> None:
    weighting = dict(type="StaticWeighting", weights=dict(c=20.0))
    cfg = escalation(
        weighting=weighting, conflict_threshold=0.05, imbalance_threshold=1.0, patience=1
    )
    model, optim_wrapper = make(cfg)
    for step in range(2):
        model.train_step(batch(10 + step), optim_wrapper)
    assert model.balancer.active_aggregator() == "pcgrad_equal_norm"


def test_escalation_resumes_with_another_patience() -> None:
    """The window of recent values is cut to the new patience, newest kept."""
    model, optim_wrapper = make(escalation(conflict_threshold=1e9, imbalance_threshold=1e9))
    for step in range(2):
        model.train_step(batch(10 + step), optim_wrapper)
    recent = model.balancer.conflict.recent.tolist()
    state = model.state_dict()
    for patience, expected in ((1, recent[1:]), (4, [0.0, 0.0, *recent])):
        cfg = escalation(conflict_threshold=1e9, imbalance_threshold=1e9)
        resumed, _ = make({**cfg, "patience": patience})
        resumed.load_state_dict(state)
        assert resumed.balancer.conflict.recent.tolist() == expected
        assert int(resumed.balancer.measurements) == 2


@pytest.mark.parametrize("weighting", [None, dict(type="UncertaintyWeighting")])
def test_escalation_stays_with_its_weighting_when_tasks_agree(weighting: dict | None) -> None:
    """Three copies of one task (the default weighting, FAMO's, and uncertainty weighting): the
    conflict strength stays under a tenth of its 0.1 threshold and nothing switches."""
    cfg = escalation() if weighting is None else escalation(weighting=weighting)
    model, optim_wrapper = make(cfg)
    tie_tasks(model)
    for step in range(8):
        model.train_step(batch(10 + step, conflict=False), optim_wrapper)
    assert not bool(model.balancer.escalated)
    assert int(model.balancer.measurements) == 8
    assert float(model.balancer.conflict.ema) < 0.01


@pytest.mark.parametrize("chunk_numel", [None, 10])
def test_batched_task_gradients_give_the_exact_surgery_update(chunk_numel: int | None) -> None:
    """One batched backward per chunk: the update of PCGrad per sharing group computed from
    one backward per task outside the balancer, whole or chunked."""
    weighting = dict(type="StaticWeighting", weights=dict(a=1.0, b=2.0, c=0.5))
    balancer = dict(type="PCGrad", weighting=weighting, seed=7, batched_backward=True)
    model, optim_wrapper = make(dict(balancer, chunk_numel=chunk_numel))
    data = batch(1)
    generator = torch.Generator().manual_seed(7)

    def aggregate(group, rows):
        a = functional.AGGREGATORS["pcgrad"](rows.double() @ rows.double().T, generator=generator)
        return a.to(rows) @ rows

    expected = reference_update(model, data, torch.tensor([1.0, 2.0, 0.5]), aggregate)
    assert_updates(step_and_diff(model, optim_wrapper, data), expected)


def test_batched_and_sequential_task_gradients_agree_under_amp() -> None:
    results = []
    for batched in (False, True):
        torch.manual_seed(0)
        model = BranchedRegressor(dict(type="NashMTL", batched_backward=batched))
        optim_wrapper = MTLAmpOptimWrapper(
            optimizer=torch.optim.SGD(model.parameters(), lr=1.0), loss_scale=2.0**10
        )
        results.append(step_and_diff(model, optim_wrapper, batch(8)))
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, rtol=1e-6, atol=1e-9, msg=name)


def test_batched_backward_is_chosen_by_device_unless_a_config_says() -> None:
    assert build_balancer(dict(type="PCGrad"), TASKS).batched_backward is None
    assert (
        build_balancer(dict(type="PCGrad", batched_backward=False), TASKS).batched_backward is False
    )
    weighting_only = build_balancer(dict(type="EqualWeighting", batched_backward=True), TASKS)
    assert weighting_only.batched_backward is True


@pytest.mark.parametrize("aggregator", ["NashMTL", "PCGrad"])
def test_amp_aggregates_unscaled_gradients(aggregator: str) -> None:
    """Nash-MTL's weights change with the gradients' scale: only unscaled aggregation gives the
    same step under two loss scales (powers of two, so scaling itself is exact)."""
    results = []
    for scale in (2.0**4, 2.0**12):
        torch.manual_seed(0)
        model = BranchedRegressor(dict(type=aggregator))
        optim_wrapper = MTLAmpOptimWrapper(
            optimizer=torch.optim.SGD(model.parameters(), lr=1.0), loss_scale=scale
        )
        results.append(step_and_diff(model, optim_wrapper, batch(8)))
    assert_updates(results[1], results[0], atol=1e-7)


def test_amp_skips_a_step_whose_task_gradient_overflows_and_counts_the_task() -> None:
    torch.manual_seed(0)
    # task c's loss is finite; weighted and scaled, its gradient is not
    weighting = dict(type="StaticWeighting", weights=dict(c=1e36))
    model = BranchedRegressor(dict(type="PCGrad", weighting=weighting))
    optim_wrapper = MTLAmpOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0), loss_scale=dict(init_scale=2.0**16)
    )
    data = batch(9)
    hub = MessageHub.get_current_instance()
    before_count = hub.get_info("nonfinite_grad/c", 0)
    diff = step_and_diff(model, optim_wrapper, data)
    assert all(float(d.abs().max()) == 0.0 for d in diff.values())
    assert hub.get_info("nonfinite_grad/c", 0) == before_count + 1
    assert hub.get_info("nonfinite_grad/a", 0) == 0
    assert optim_wrapper.loss_scaler.get_scale() == 2.0**15


def test_a_failed_nash_mtl_solve_falls_back_visibly_to_equal_weights() -> None:
    """One Newton iteration cannot solve the conflicting batch's bargaining problem: the step
    says so (a warning naming the group and iteration, a counter in the log and the message
    hub) and updates each group with equal weights, the plain weighted gradient."""
    model, optim_wrapper = make(dict(type="NashMTL", max_iter=1))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        data = batch(11)
        expected = reference_update(model, data, torch.ones(3), lambda group, rows: rows.sum(0))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        log_vars = model.train_step(data, optim_wrapper)
    finally:
        logger.removeHandler(handler)
    diff = {n: before[n] - p.detach() for n, p in model.named_parameters()}
    assert_updates(diff, expected)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any(
        "nash_mtl failed in sharing group a+b at iteration 1" in w and "equal weights" in w
        for w in warnings
    ), warnings
    assert int(model.balancer.solver_failures) == 2  # both groups
    assert float(log_vars["solver_failures"]) == 2.0
    assert MessageHub.get_current_instance().get_info("solver_failures") == 2


def test_a_solved_nash_mtl_step_reports_no_failure() -> None:
    model, optim_wrapper = make(dict(type="NashMTL"))
    log_vars = model.train_step(batch(11), optim_wrapper)
    assert "solver_failures" not in log_vars and int(model.balancer.solver_failures) == 0


@pytest.mark.parametrize("balancer", [dict(type="PCGrad"), dict(type="GradNorm")])
def test_a_per_task_backward_runs_through_that_task_only(balancer: dict) -> None:
    """Each per-task backward starts at its task's own loss: another task's head takes no part
    in it. (Differentiating a row of the stacked losses sent zeros back through every head, and
    doubled the per-task step of the quickstart model.)"""
    model, optim_wrapper = make(balancer)
    data = batch(3)
    model.train_step(data, optim_wrapper)  # traces the sharing first
    calls = {t: 0 for t in TASKS}
    for task in TASKS:
        model.heads[task].register_full_backward_hook(
            lambda *_, task=task: calls.__setitem__(task, calls[task] + 1)
        )
    model.train_step(data, optim_wrapper)
    # PCGrad: the task's own backward; GradNorm: also its gradient norm's, to the trunk
    expected = 1 if balancer["type"] == "PCGrad" else 2
    assert calls == {t: expected for t in TASKS}
