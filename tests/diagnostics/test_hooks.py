"""GradientDiagnosticsHook: what it asks of the balancer, what it logs (read back from the
``scalars.json`` of mmengine's real ``Visualizer`` + ``LocalVisBackend``), its collapse warnings
and its checkpoint state; then the same inside a real ``MTLRunner`` that trains, saves and
resumes."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from mmengine.visualization import Visualizer
from torch import nn

from adperception.balancing.stats import GradientStats, GroupGradients
from adperception.diagnostics import GradientDiagnosticsHook
from adperception.diagnostics.plots import (
    Switch,
    escalation_switches,
    find_scalars,
    read_scalars,
    write_plots,
)
from adperception.engine import MTLRunner, install_checkpoint_allowlist
from adperception.registry import HOOKS
from tests.balancing.models_for_tests import TASKS, BranchedRegressor

SQRT3 = math.sqrt(3)
ALL = "det+seg+depth"
PAIR = "det+seg"
WEIGHTS = {"det": 2.0, "seg": 1.0, "depth": 0.5}


class Balancer:
    """The balancer's side of the contract: its measurement interval, the record it leaves."""

    def __init__(self, measure_interval: int | None) -> None:
        self.measure_interval = measure_interval
        self.stats: GradientStats | None = None
        self.decisions: dict[str, float] = {}

    def measures_at(self, step: int) -> bool:
        return (step + 1) % self.measure_interval == 0

    def measurement_scalars(self) -> dict[str, float]:
        return dict(self.decisions)


class Model(nn.Module):
    def __init__(self, tasks: tuple[str, ...], measure_interval: int | None) -> None:
        super().__init__()
        self.tasks = tasks
        self.trunk = nn.Linear(2, 2)
        self.balancer = Balancer(measure_interval)


def make_runner(
    tmp_path: Path, tasks: tuple[str, ...] = ("det", "seg", "depth"), interval: int | None = 2
):
    """What the hook reads of a runner; the visualizer and logger are mmengine's own."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    name = f"diag_{uuid.uuid4().hex}"
    visualizer = Visualizer(
        name=name, vis_backends=[dict(type="LocalVisBackend")], save_dir=str(tmp_path)
    )
    logger = MMLogger.get_instance(name, log_file=str(tmp_path / "log.txt"), log_level="INFO")
    model = Model(tasks, interval)
    return SimpleNamespace(iter=0, model=model, visualizer=visualizer, logger=logger)


def logged(tmp_path: Path) -> dict[int, dict[str, float]]:
    path = tmp_path / "vis_data" / "scalars.json"
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {r.pop("step"): r for r in records}


def log_lines(tmp_path: Path, level: str) -> list[str]:
    return [line for line in (tmp_path / "log.txt").read_text().splitlines() if level in line]


def group(tasks: tuple[str, ...], grads, sign, agg=None) -> GroupGradients:
    g = torch.tensor(grads, dtype=torch.float64)
    return GroupGradients(
        tasks=tasks,
        numel=g.shape[1],
        gram=g @ g.T,
        update_sign=torch.tensor(sign, dtype=torch.int8),
        aggregator_weights=None if agg is None else torch.tensor(agg),
    )


Record = Callable[[int], GradientStats]


def run_iter(hook, runner, iteration: int, losses: dict[str, float], record: Record) -> None:
    """One training iteration as the runner and the balancer see it."""
    runner.iter = iteration
    balancer = runner.model.balancer
    if balancer.measures_at(iteration):
        balancer.stats = record(iteration)
    outputs = {f"loss_{task}": torch.tensor(value) for task, value in losses.items()}
    outputs.update({f"weight_{task}": torch.tensor(w) for task, w in WEIGHTS.items()})
    hook.after_train_iter(runner, batch_idx=iteration, outputs=outputs)


def two_measurements(iteration: int) -> GradientStats:
    """Weighted gradients: det (2, 0), seg (0, 3) and depth first (1, √3), 60° from det and
    30° from seg, then (-2, 0), opposite to det. In det+seg, det (1, 1) and seg first (1, -1)
    (orthogonal), then (-1, -1) (opposite)."""
    if iteration == 1:
        depth, seg, sign_all, sign_pair = [1, SQRT3], [1, -1], [1, -1, 0, 1], [1, 1]
    else:
        depth, seg, sign_all, sign_pair = [-2, 0], [-1, -1], [-1, -1, 1, 1], [1, -1]
    groups = {
        ALL: group(("det", "seg", "depth"), [[2, 0], [0, 3], depth], sign_all),
        PAIR: group(("det", "seg"), [[1, 1], seg], sign_pair, agg=[0.25, 0.75]),
    }
    return GradientStats(iter=iteration, loss_weights=dict(WEIGHTS), groups=groups)


LOSSES = [
    {"det": 4.0, "seg": 2.0, "depth": 1.0},
    {"det": 2.0, "seg": 2.0, "depth": 3.0},  # first window's mean: L(0) = 3, 2, 2
    {"det": 1.0, "seg": 3.0, "depth": 2.0},
    {"det": 2.0, "seg": 1.0, "depth": 2.0},  # second window's mean: 1.5, 2, 2
]


def pair_stats(iteration: int) -> GradientStats:
    return GradientStats(
        iter=iteration,
        loss_weights={"det": 1.0, "seg": 1.0},
        groups={PAIR: group(("det", "seg"), [[1, 0], [0, 1]], [1, 1])},
    )


def test_the_hook_is_registered() -> None:
    with DefaultScope.overwrite_default_scope("adperception"):  # as a config sets it
        hook = HOOKS.build(dict(type="GradientDiagnosticsHook", collapse_window=5))
    assert isinstance(hook, GradientDiagnosticsHook) and hook.collapse_window == 5
    assert hook.priority == "LOW"


def test_a_balancer_without_measure_interval_is_refused(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, interval=None)
    with pytest.raises(ValueError, match="model.balancer.measure_interval is not set"):
        GradientDiagnosticsHook().before_train(runner)


def test_only_the_balancers_measurements_are_logged(tmp_path: Path) -> None:
    """A record on every step (surgery measures at every step) is logged at the balancer's
    measurement interval only."""
    hook, runner = GradientDiagnosticsHook(), make_runner(tmp_path, ("det", "seg"), interval=3)
    for iteration in range(6):
        runner.iter = iteration
        runner.model.balancer.stats = pair_stats(iteration)
        hook.after_train_iter(runner, batch_idx=iteration, outputs={})
        assert runner.model.balancer.stats is None
    assert sorted(logged(tmp_path)) == [3, 6]


def test_measurements_are_logged_every_interval(tmp_path: Path) -> None:
    hook, runner = GradientDiagnosticsHook(), make_runner(tmp_path, ("det", "seg"), interval=3)
    requested = []

    def record(iteration: int) -> GradientStats:
        requested.append(iteration)
        return pair_stats(iteration)

    for iteration in range(9):
        run_iter(hook, runner, iteration, {"det": 1.0, "seg": 1.0}, record)
        assert runner.model.balancer.stats is None
    assert requested == [2, 5, 8]
    assert sorted(logged(tmp_path)) == [3, 6, 9]


def test_logged_values(tmp_path: Path) -> None:
    hook, runner = GradientDiagnosticsHook(), make_runner(tmp_path)
    for iteration, losses in enumerate(LOSSES):
        run_iter(hook, runner, iteration, losses, two_measurements)
    scalars = logged(tmp_path)
    assert sorted(scalars) == [2, 4]
    first, second = scalars[2], scalars[4]
    expected = {
        f"diag/{ALL}/weighted_grad_norm/det": 2.0,
        f"diag/{ALL}/weighted_grad_norm/seg": 3.0,
        f"diag/{ALL}/weighted_grad_norm/depth": 2.0,
        f"diag/{ALL}/grad_norm/det": 1.0,  # 2 / weight 2
        f"diag/{ALL}/grad_norm/seg": 3.0,
        f"diag/{ALL}/grad_norm/depth": 4.0,  # 2 / weight 0.5
        f"diag/{ALL}/cos/det-seg": 0.0,
        f"diag/{ALL}/cos/det-depth": 0.5,
        f"diag/{ALL}/cos/seg-depth": SQRT3 / 2,
        f"diag/{ALL}/conflict_rate": 0.0,
        f"diag/{PAIR}/weighted_grad_norm/det": math.sqrt(2),
        f"diag/{PAIR}/weighted_grad_norm/seg": math.sqrt(2),
        f"diag/{PAIR}/grad_norm/det": math.sqrt(2) / 2,
        f"diag/{PAIR}/grad_norm/seg": math.sqrt(2),
        f"diag/{PAIR}/cos/det-seg": 0.0,
        f"diag/{PAIR}/conflict_rate": 0.0,
        f"diag/{PAIR}/agg_weight/det": 0.25,
        f"diag/{PAIR}/agg_weight/seg": 0.75,
        "diag/loss_ratio/det": 1.0,
        "diag/loss_ratio/seg": 1.0,
        "diag/loss_ratio/depth": 1.0,
        "diag/weight/det": 2.0,
        "diag/weight/seg": 1.0,
        "diag/weight/depth": 0.5,
    }
    assert first == pytest.approx(expected, abs=1e-12)
    # the second measurement adds the sign-flip rates against the first
    assert set(second) == set(expected) | {
        f"diag/{ALL}/sign_flip_rate",
        f"diag/{PAIR}/sign_flip_rate",
    }
    assert second[f"diag/{ALL}/cos/det-depth"] == pytest.approx(-1.0)
    assert second[f"diag/{ALL}/cos/seg-depth"] == pytest.approx(0.0, abs=1e-12)
    assert second[f"diag/{ALL}/conflict_rate"] == pytest.approx(1 / 3)
    assert second[f"diag/{ALL}/sign_flip_rate"] == pytest.approx(1 / 3)  # (1,-1,0,1)→(-1,-1,1,1)
    assert second[f"diag/{PAIR}/cos/det-seg"] == pytest.approx(-1.0)
    assert second[f"diag/{PAIR}/conflict_rate"] == 1.0
    assert second[f"diag/{PAIR}/sign_flip_rate"] == 0.5
    assert second["diag/loss_ratio/det"] == 0.5  # 1.5 / 3
    assert second["diag/loss_ratio/seg"] == 1.0
    assert second["diag/loss_ratio/depth"] == 1.0
    info = log_lines(tmp_path, "INFO")
    assert len(info) == 2
    assert "gradient diagnostics at iter 4: det+seg+depth: conflict 0.33, sign flips" in info[1]
    assert "det+seg: conflict 1.00, sign flips 0.50, grad norms det 0.707 seg 1.41" in info[1]
    assert "loss ratio det 0.500 seg 1.000 depth 1.000" in info[1]


def test_what_the_balancer_made_of_a_measurement_is_logged_beside_it(tmp_path: Path) -> None:
    hook, runner = GradientDiagnosticsHook(), make_runner(tmp_path)
    runner.model.balancer.decisions = {"escalation/imbalance": 0.8, "escalation/imbalance_on": 1.0}
    for iteration, losses in enumerate(LOSSES[:2]):
        run_iter(hook, runner, iteration, losses, two_measurements)
    scalars = logged(tmp_path)[2]
    assert scalars["diag/escalation/imbalance"] == 0.8
    assert scalars["diag/escalation/imbalance_on"] == 1.0


def test_non_finite_and_missing_losses_stay_out_of_the_window(tmp_path: Path) -> None:
    hook, runner = GradientDiagnosticsHook(), make_runner(tmp_path, ("det", "seg"))
    for iteration, losses in enumerate(
        [{"det": math.nan, "seg": 1.0}, {"det": 2.0, "seg": 3.0}, {"seg": 1.0}, {"det": 1.0}]
    ):
        run_iter(hook, runner, iteration, losses, pair_stats)
    scalars = logged(tmp_path)[4]
    assert scalars["diag/loss_ratio/det"] == 0.5  # L(0) = 2 (NaN left out), L(4) = 1
    assert scalars["diag/loss_ratio/seg"] == 0.5  # L(0) = 2, L(4) = 1 (no seg loss at iter 3)


def test_a_task_with_zero_weight_has_no_raw_norm(tmp_path: Path) -> None:
    hook, runner = GradientDiagnosticsHook(), make_runner(tmp_path, ("det", "seg"), interval=1)
    stats = GradientStats(
        iter=0,
        loss_weights={"det": 1.0, "seg": 0.0},
        groups={PAIR: group(("det", "seg"), [[1, 0], [0, 0]], [1, 0])},
    )
    run_iter(hook, runner, 0, {"det": 1.0, "seg": 1.0}, lambda i: stats)
    scalars = logged(tmp_path)[1]
    assert scalars[f"diag/{PAIR}/grad_norm/det"] == 1.0
    assert f"diag/{PAIR}/grad_norm/seg" not in scalars
    assert scalars[f"diag/{PAIR}/weighted_grad_norm/seg"] == 0.0


def test_a_record_of_another_iteration_is_not_logged(tmp_path: Path) -> None:
    hook, runner = GradientDiagnosticsHook(), make_runner(tmp_path, interval=100)
    stale = two_measurements(1)
    runner.model.balancer.stats = stale
    run_iter(hook, runner, 5, LOSSES[0], two_measurements)
    assert logged(tmp_path) == {}
    assert runner.model.balancer.stats is stale


@pytest.mark.parametrize(
    ("det", "warned_at"),
    [([1.0, 0.8, 0.6, 0.4], [3, 4]), ([1.0, 1.0, 1.0, 1.0], [])],
    ids=["det_improves", "all_flat"],
)
def test_collapse_warning(tmp_path: Path, det: list[float], warned_at: list[int]) -> None:
    hook = GradientDiagnosticsHook(collapse_window=3, collapse_tolerance=0.01)
    runner = make_runner(tmp_path, ("det", "seg"), interval=1)
    for iteration, loss in enumerate(det):
        run_iter(hook, runner, iteration, {"det": loss, "seg": 2.0}, pair_stats)
    warnings = log_lines(tmp_path, "WARNING")
    assert len(warnings) == len(warned_at)
    for line, step in zip(warnings, warned_at, strict=True):
        assert f"at iter {step}: the loss of ['seg'] improved by less than 1.0%" in line


def test_state_survives_a_checkpoint(tmp_path: Path) -> None:
    """Saved mid-window, loaded with ``weights_only=True``: the resumed hook logs what the
    uninterrupted one does (less the sign-flip rate) and ends in the same state."""
    original = GradientDiagnosticsHook(collapse_window=2)
    runner = make_runner(tmp_path / "a")
    for iteration, losses in enumerate(LOSSES[:3]):
        run_iter(original, runner, iteration, losses, two_measurements)
    checkpoint = {"meta": {}}
    original.before_save_checkpoint(runner, checkpoint)
    torch.save(checkpoint, tmp_path / "ckpt.pth")
    loaded = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    resumed = GradientDiagnosticsHook(collapse_window=2)
    resumed.after_load_checkpoint(runner, loaded)
    resumed_runner = make_runner(tmp_path / "b")
    for hook, run in ((original, runner), (resumed, resumed_runner)):
        run_iter(hook, run, 3, LOSSES[3], two_measurements)
    expected = {k: v for k, v in logged(tmp_path / "a")[4].items() if "sign_flip" not in k}
    assert logged(tmp_path / "b")[4] == expected
    assert expected["diag/loss_ratio/det"] == 0.5
    states = [{}, {}]
    original.before_save_checkpoint(runner, states[0])
    resumed.before_save_checkpoint(resumed_runner, states[1])
    assert states[0] == states[1]
    assert states[0]["diagnostics"]["history"] == {
        "det": [3.0, 1.5],
        "seg": [2.0, 2.0],
        "depth": [2.0, 2.0],
    }


def test_a_checkpoint_without_diagnostics_leaves_the_hook_fresh(tmp_path: Path) -> None:
    hook = GradientDiagnosticsHook()
    hook.after_load_checkpoint(make_runner(tmp_path), {"meta": {}})
    state: dict = {}
    hook.before_save_checkpoint(None, state)
    assert state["diagnostics"] == {
        "first_loss": {},
        "history": {},
        "window_sum": {},
        "window_count": {},
    }


class Regressions(torch.utils.data.Dataset):
    """Inputs and the three targets of ``BranchedRegressor``."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 6, generator=gen)
        self.y = self.x[:, :3] @ torch.randn(3, 3, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: int) -> dict:
        return dict(inputs=self.x[idx], data_samples=self.y[idx])


def train(
    work_dir: Path,
    max_iters: int,
    load_from: str | None = None,
    balancer: dict | None = None,
) -> list[dict]:
    runner = MTLRunner(
        model=BranchedRegressor(balancer or dict(type="EqualWeighting", measure_interval=2)),
        work_dir=str(work_dir),
        experiment_name=f"diag_{uuid.uuid4().hex}",
        train_dataloader=dict(
            dataset=Regressions(),
            sampler=dict(type="InfiniteSampler", shuffle=True),
            batch_size=4,
            num_workers=0,
            collate_fn=dict(type="default_collate"),
        ),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(type="MTLOptimWrapper", optimizer=dict(type="SGD", lr=0.05)),
        default_hooks=dict(
            checkpoint=dict(type="CheckpointHook", interval=4, by_epoch=False),
            logger=dict(type="LoggerHook", interval=1),
        ),
        log_processor=dict(by_epoch=False, window_size=1),  # every iteration's own loss
        custom_hooks=[dict(type="GradientDiagnosticsHook")],
        default_scope="adperception",
        resume=load_from is not None,
        load_from=load_from,
        randomness=dict(seed=0),
        log_level="WARNING",
    )
    runner.train()
    (path,) = work_dir.glob("*/vis_data/scalars.json")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """4 iterations, then 4 more resumed from the checkpoint: the second work dir and the log
    lines of both runs."""
    install_checkpoint_allowlist()
    root = tmp_path_factory.mktemp("runs")
    first = train(root / "first", max_iters=4)
    second = train(root / "second", max_iters=8, load_from=str(root / "first/iter_4.pth"))
    return root / "second", first + second


def test_in_a_real_runner_that_resumes(resumed_run: tuple[Path, list[dict]]) -> None:
    """Logged at the LoggerHook's steps, with loss ratios that continue across a resume."""
    _, lines = resumed_run
    diag = {r["step"]: r for r in lines if f"diag/loss_ratio/{TASKS[0]}" in r}
    loss = {r["step"]: r for r in lines if f"loss_{TASKS[0]}" in r}
    assert sorted(diag) == [2, 4, 6, 8]
    assert sorted(loss) == list(range(1, 9))
    for task in TASKS:
        window = [(loss[s][f"loss_{task}"] + loss[s - 1][f"loss_{task}"]) / 2 for s in diag]
        ratios = [diag[s][f"diag/loss_ratio/{task}"] for s in diag]
        assert ratios == pytest.approx([w / window[0] for w in window])
        assert all(diag[s][f"diag/weight/{task}"] == 1.0 for s in diag)
    assert f"diag/{'+'.join(TASKS)}/sign_flip_rate" in diag[4]
    assert f"diag/{'+'.join(TASKS)}/sign_flip_rate" not in diag[6]  # first after the resume
    assert f"diag/{'+'.join(TASKS)}/sign_flip_rate" in diag[8]


def test_what_it_logs_is_what_analyze_logs_draws(resumed_run: tuple[Path, list[dict]]) -> None:
    work_dir, _ = resumed_run
    written, skipped = write_plots(read_scalars(find_scalars(work_dir)), work_dir / "plots")
    names = ["losses.png", "weights.png", "grad_norms.png", "cosine.png", "conflict.png"]
    assert [p.name for p in written] == names and skipped == []


def test_the_escalations_decision_is_logged_and_drawn(tmp_path: Path) -> None:
    """The escalation's signals as logged agree with the gradient norms logged beside them, its
    moving average with its definition, and its switch with its log line and the picture."""
    install_checkpoint_allowlist()
    momentum, threshold, patience = 0.5, 0.05, 2
    balancer = dict(
        type="Escalation",
        weighting=dict(type="EqualWeighting"),
        measure_interval=2,
        imbalance_threshold=threshold,
        conflict_threshold=1.0,  # a strength never exceeds 1: conflict never switches
        momentum=momentum,
        patience=patience,
    )
    lines = train(tmp_path, max_iters=12, balancer=balancer)
    diag = {r["step"]: r for r in lines if "diag/escalation/imbalance" in r}
    assert sorted(diag) == [2, 4, 6, 8, 10, 12]
    average, above, switch = 0.0, 0, None
    for step, record in diag.items():
        norms: dict[str, list[float]] = {}  # the weighted gradient norms of each group
        for key, value in record.items():
            if "/weighted_grad_norm/" in key:
                norms.setdefault(key.rsplit("/", 2)[0], []).append(value)
        worst = max(math.log10(max(n) / min(n)) for n in norms.values())
        assert record["diag/escalation/imbalance"] == pytest.approx(worst, rel=1e-6)
        average = momentum * average + (1 - momentum) * worst  # from 0
        assert record["diag/escalation/imbalance_average"] == pytest.approx(average, rel=1e-6)
        assert record["diag/escalation/imbalance_threshold"] == threshold
        above = above + 1 if average > threshold else 0
        if switch is None and above >= patience:
            switch = step
        assert record["diag/escalation/imbalance_on"] == float(switch is not None)
        assert record["diag/escalation/conflict_on"] == 0.0
    assert switch is not None and switch < 12  # the run switched while it was logged
    (log,) = tmp_path.glob("*/*.log")
    assert f"balancer escalates at iteration {switch}: imbalance" in log.read_text()
    scalars = read_scalars(find_scalars(tmp_path))
    assert escalation_switches(scalars) == [Switch(switch, "imbalance", "equal gradient norms")]
    written, _ = write_plots(scalars, tmp_path / "plots")
    assert "escalation.png" in [p.name for p in written]
