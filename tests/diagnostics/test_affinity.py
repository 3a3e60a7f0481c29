"""Task affinity: the lookahead affinity against its first-order expansion and against targets
that agree or conflict by construction, the grouping search against hand-scored partitions, the
branch point against constructed cosines, and the hook and tools/analyze_affinity.py on a real
training run."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from adperception.diagnostics.affinity import (
    affinity_series,
    best_groupings,
    branch_point,
    grouping_score,
    late_mean,
    measure_affinity,
    partitions,
)
from adperception.diagnostics.plots import Series
from adperception.engine import MTLRunner
from tests.balancing.models_for_tests import TASKS, BranchedRegressor, batch
from tests.tools_for_tests import load_tool

ROOT = Path(__file__).resolve().parents[2]


def float64(model: BranchedRegressor) -> BranchedRegressor:
    """The model in float64, its parameter→task map traced first (on its float32 probe)."""
    model.parameter_tasks()
    return model.double()


def shared_gradients(model: BranchedRegressor, data: dict) -> dict[str, list[torch.Tensor]]:
    """Per task, its gradient on the parameters it shares (trunk; branch_ab for a and b)."""
    losses = model.loss(data["inputs"], data["data_samples"])
    params = {"a": ["trunk", "branch_ab"], "b": ["trunk", "branch_ab"], "c": ["trunk"]}
    grads = {}
    for task in TASKS:
        modules = [getattr(model, m) for m in params[task]]
        tensors = [p for m in modules for p in m.parameters()]
        grads[task] = torch.autograd.grad(losses[f"loss_{task}"], tensors, retain_graph=True)
    return grads, losses


def test_lookahead_is_the_first_order_expansion_for_a_small_sgd_step() -> None:
    """Z[i, j] = 1 - L_j(θ - η g_i) / L_j ≈ η ⟨g_i, g_j⟩ / L_j over the parameters both reach,
    to O(η²); the model is left as it was."""
    torch.manual_seed(0)
    model = float64(BranchedRegressor(dict(type="EqualWeighting")))  # float32 would round
    data = {k: v.double() for k, v in batch(3).items()}  # a 1e-5 change in L_j to 1 %
    lr = 1e-4
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    measured = measure_affinity(model, data, optimizer)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    grads, losses = shared_gradients(model, data)
    for i, a in enumerate(TASKS):
        for j, b in enumerate(TASKS):
            common = min(len(grads[a]), len(grads[b]))  # c reaches the trunk only
            dot = sum(
                float((x * y).sum())
                for x, y in zip(grads[a][:common], grads[b][:common], strict=True)
            )
            expected = lr * dot / float(losses[f"loss_{b}"])
            assert measured.lookahead[i, j] == pytest.approx(expected, rel=1e-2, abs=1e-9)


def test_lookahead_steps_at_each_parameter_groups_rate_also_under_adam() -> None:
    """AdamW with the trunk at lr 1e-5 and branch_ab at 3e-5, after a real step: the lookahead
    is still a gradient step, Z[a, b] ≈ Σ_groups lr_g ⟨g_a, g_b⟩_g / L_b."""
    torch.manual_seed(0)
    model = float64(BranchedRegressor(dict(type="EqualWeighting")))
    trunk, branch = list(model.trunk.parameters()), list(model.branch_ab.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith(("trunk", "branch_ab"))]
    optimizer = torch.optim.AdamW(
        [dict(params=trunk, lr=1e-5), dict(params=branch, lr=3e-5), dict(params=rest)], lr=1e-3
    )
    losses = model.loss(batch(0)["inputs"].double(), batch(0)["data_samples"].double())
    sum(losses.values()).backward()
    optimizer.step()
    optimizer.zero_grad()
    data = {k: v.double() for k, v in batch(4).items()}
    measured = measure_affinity(model, data, optimizer)
    grads, losses = shared_gradients(model, data)
    rates = [1e-5] * len(trunk) + [3e-5] * len(branch)
    dot = sum(
        lr * float((x * y).sum()) for lr, x, y in zip(rates, grads["a"], grads["b"], strict=True)
    )
    a, b = TASKS.index("a"), TASKS.index("b")
    assert measured.lookahead[a, b] == pytest.approx(dot / float(losses["loss_b"]), rel=1e-2)


@pytest.mark.parametrize("conflict", [False, True])
def test_tasks_with_one_target_help_each_other_and_opposite_targets_hurt(conflict: bool) -> None:
    """b's target is a's (agree) or minus a's (conflict): a step for a lowers b's loss, or
    raises it."""
    torch.manual_seed(0)
    model = BranchedRegressor(dict(type="EqualWeighting"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    measured = measure_affinity(model, batch(1, size=32, conflict=conflict), optimizer)
    a, b = TASKS.index("a"), TASKS.index("b")
    assert (measured.lookahead[a, b] < 0) == conflict
    assert (measured.lookahead[b, a] < 0) == conflict


def test_partitions_are_all_set_partitions() -> None:
    """Bell numbers: 1, 2, 5, 15, 52 partitions of 1..5 items, each covering every item once."""
    for n, bell in enumerate([1, 2, 5, 15, 52], start=1):
        items = [f"t{k}" for k in range(n)]
        found = list(partitions(items))
        assert len(found) == bell
        assert len({tuple(sorted(p)) for p in found}) == bell
        for partition in found:
            assert sorted(t for group in partition for t in group) == sorted(items)


def test_best_grouping_puts_the_tasks_that_help_each_other_together() -> None:
    tasks = ("det", "seg", "depth", "normals")
    z = np.array(
        [
            [0.0, 0.3, -0.1, -0.2],
            [0.2, 0.0, -0.2, -0.1],
            [-0.1, -0.3, 0.0, 0.4],
            [0.0, -0.2, 0.1, 0.0],
        ]
    )
    # by hand: det onto seg 0.3, seg onto det 0.2, depth onto normals 0.4, normals onto depth 0.1
    assert grouping_score(z, tasks, [("det", "seg"), ("depth", "normals")]) == pytest.approx(1.0)
    # all in one: each task gets the mean of the other three rows' entries onto it
    expected = sum((z[:, j].sum() - z[j, j]) / 3 for j in range(4))
    assert grouping_score(z, tasks, [tasks]) == pytest.approx(expected)
    ranked = best_groupings(z, tasks, max_groups=2)
    assert ranked[0][0] == [("det", "seg"), ("depth", "normals")]
    assert all(len(groups) <= 2 for groups, _ in ranked)
    assert best_groupings(z, tasks, max_groups=1) == [([tasks], pytest.approx(expected))]
    with pytest.raises(ValueError, match="at least one group"):
        best_groupings(z, tasks, max_groups=0)


def test_branch_point_shares_the_stages_where_the_groups_agree() -> None:
    groups = [("det", "seg"), ("depth", "normals")]
    cosines = {
        0: {("det", "depth"): 0.4, ("seg", "normals"): 0.2, ("det", "seg"): 0.5},
        1: {("det", "depth"): -0.05, ("seg", "normals"): 0.05},  # orthogonal, not conflicting
        2: {("det", "depth"): 0.1, ("seg", "depth"): -0.2},
        3: {("det", "depth"): -0.5},
    }
    stage, reasons = branch_point(cosines, groups)
    assert stage == 2
    assert "seg and depth conflict" in reasons[-1] and len(reasons) == 3
    assert branch_point(cosines, groups, threshold=-1.0)[0] == 4
    assert branch_point(cosines, [("det", "seg", "depth", "normals")])[0] == 4
    assert branch_point({1: cosines[1]}, groups)[0] is None  # stage 0 not measured across
    assert branch_point({0: cosines[0]}, groups)[0] == 1  # nothing known past stage 0
    stage, reasons = branch_point({}, groups)  # a run without AffinityHook
    assert stage is None and "no per-stage gradient cosines" in reasons[0]


def test_the_cosine_fallback_reads_the_largest_group_and_late_means_skip_the_start() -> None:
    scalars = {
        "diag/det+seg+depth/cos/det-seg": Series([10, 20, 30, 40], [0.9, 0.1, 0.2, 0.3]),
        "diag/det+seg/cos/det-seg": Series([10, 20, 30, 40], [0.5, 0.5, 0.5, 0.5]),
        "diag/det+seg+depth/cos/seg-depth": Series([10, 20, 30, 40], [-0.4, -0.4, -0.2, -0.2]),
    }
    kind, steps, matrices = affinity_series(scalars, ("det", "seg", "depth"))
    assert kind == "cosine" and steps.tolist() == [10, 20, 30, 40]
    mean = late_mean(steps, matrices, since=0.5)  # steps 20, 30, 40
    assert mean[0, 1] == mean[1, 0] == pytest.approx(0.2)
    assert mean[1, 2] == pytest.approx(-0.8 / 3)
    assert np.isnan(mean[0, 2]) and mean[0, 0] == 0.0
    with pytest.raises(ValueError, match="no task affinity"):
        affinity_series({"loss": Series([1], [1.0])}, ("det", "seg"))


class Regressions(torch.utils.data.Dataset):
    def __init__(self) -> None:
        data = batch(7, size=32, conflict=True)
        self.x, self.y = data["inputs"], data["data_samples"]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: int) -> dict:
        return dict(inputs=self.x[idx], data_samples=self.y[idx])


def test_hook_in_a_real_run_and_the_tool_recommends_a_grouping(tmp_path: Path, capsys) -> None:
    """b's target is minus a's, c's another function: a run logs the lookahead affinity every
    2 iterations and the tool, given a budget of 2 groups, keeps a and b apart."""
    runner = MTLRunner(
        model=BranchedRegressor(dict(type="EqualWeighting", measure_interval=2)),
        work_dir=str(tmp_path / "run"),
        experiment_name=f"affinity_{uuid.uuid4().hex}",
        train_dataloader=dict(
            dataset=Regressions(),
            sampler=dict(type="InfiniteSampler", shuffle=True),
            batch_size=8,
            num_workers=0,
            collate_fn=dict(type="default_collate"),
        ),
        train_cfg=dict(by_epoch=False, max_iters=8),
        optim_wrapper=dict(type="MTLOptimWrapper", optimizer=dict(type="SGD", lr=0.05)),
        default_hooks=dict(logger=dict(type="LoggerHook", interval=1)),
        custom_hooks=[dict(type="AffinityHook", interval=2), dict(type="GradientDiagnosticsHook")],
        default_scope="adperception",
        randomness=dict(seed=0),
        log_level="WARNING",
    )
    runner.train()
    (path,) = (tmp_path / "run").glob("*/vis_data/scalars.json")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    logged = [r["step"] for r in records if "affinity/lookahead/a->b" in r]
    assert logged == [1, 3, 5, 7]
    out = tmp_path / "affinity"
    proc = subprocess.run(
        [
            sys.executable,
            "tools/analyze_affinity.py",
            str(tmp_path / "run"),
            "--budget",
            "2",
            "--out-dir",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "affinity.json").read_text())
    assert report["kind"] == "lookahead" and report["tasks"] == list(TASKS)
    best = report["groupings"]["2"][0]["groups"]
    assert not any({"a", "b"} <= set(group) for group in best)
    assert (out / "affinity.png").stat().st_size > 0
    assert "backbone.branches" in proc.stdout
    # without the lookahead, the diagnostics' cosines: the tool still answers
    cosine_only = tmp_path / "cosine"
    (cosine_only / path.parent.parent.name / "vis_data").mkdir(parents=True)
    kept = [{k: v for k, v in r.items() if not k.startswith("affinity/")} for r in records]
    (cosine_only / path.parent.parent.name / "vis_data" / "scalars.json").write_text(
        "".join(json.dumps(r) + "\n" for r in kept)
    )
    # the command line ran above: the other cases in this process
    tool = load_tool("analyze_affinity")
    assert tool.main([str(cosine_only), "--out-dir", str(tmp_path / "out2")]) == 0
    assert json.loads((tmp_path / "out2" / "affinity.json").read_text())["kind"] == "cosine"
    assert tool.main([str(tmp_path / "nowhere")]) == 1
    assert "analyze_affinity:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "run"), "--budget", "0"])
    assert "--budget must be at least 1" in capsys.readouterr().err
