"""``load_from`` (fine-tuning) against ``resume``: the balancer and the gradient diagnostics
start fresh when fine-tuning and continue when resuming, in a real runner."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch

from adperception.engine import MTLRunner, install_checkpoint_allowlist
from tests.balancing.models_for_tests import BranchedRegressor, batch

BALANCER = dict(
    type="Escalation", measure_interval=1, conflict_threshold=0.05, momentum=0.5, patience=2
)


class Conflicting(torch.utils.data.Dataset):
    """The branched regressor's conflicting targets: the escalation switches within 4 steps."""

    def __init__(self) -> None:
        data = batch(0, size=32)
        self.x, self.y = data["inputs"], data["data_samples"]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: int) -> dict:
        return dict(inputs=self.x[idx], data_samples=self.y[idx])


def train(work_dir: Path, max_iters: int, load_from: str | None, resume: bool) -> MTLRunner:
    torch.manual_seed(0)  # the model is built before the runner seeds: not by the tests' order
    runner = MTLRunner(
        model=BranchedRegressor(BALANCER),
        work_dir=str(work_dir),
        experiment_name=f"ft_{uuid.uuid4().hex}",
        train_dataloader=dict(
            dataset=Conflicting(),
            sampler=dict(type="InfiniteSampler", shuffle=True),
            batch_size=8,
            num_workers=0,
            collate_fn=dict(type="default_collate"),
        ),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(
            type="MTLOptimWrapper",
            constructor="MTLOptimWrapperConstructor",
            optimizer=dict(type="SGD", lr=0.05),
        ),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=4, by_epoch=False)),
        custom_hooks=[dict(type="GradientDiagnosticsHook")],
        default_scope="adperception",
        resume=resume,
        load_from=load_from,
        randomness=dict(seed=0),
        log_level="WARNING",
    )
    runner.train()
    return runner


def diagnostics_steps(work_dir: Path) -> list[int]:
    (path,) = work_dir.glob("*/vis_data/scalars.json")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["step"] for r in lines if "diag/loss_ratio/a" in r]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    install_checkpoint_allowlist()
    root = tmp_path_factory.mktemp("fine_tune")
    runner = train(root / "first", 4, load_from=None, resume=False)
    assert bool(runner.model.balancer.escalated)  # the state a fine-tuning run must not inherit
    return root / "first" / "iter_4.pth"


def test_fine_tuning_starts_the_balancer_and_diagnostics_fresh(first_run: Path, tmp_path) -> None:
    runner = train(tmp_path, 3, load_from=str(first_run), resume=False)
    balancer = runner.model.balancer
    assert int(balancer.num_steps) == 3
    assert int(balancer.measurements) == 3
    assert diagnostics_steps(tmp_path) == [1, 2, 3]  # measured and logged from the first step
    trunk = torch.load(first_run, weights_only=True)["state_dict"]["trunk.weight"]
    assert not torch.equal(runner.model.trunk.weight.detach(), trunk)  # trained on from it


def test_resuming_continues_them(first_run: Path, tmp_path) -> None:
    work_dir = first_run.parent
    runner = train(work_dir, 6, load_from=str(first_run), resume=True)
    balancer = runner.model.balancer
    assert int(balancer.num_steps) == 6 and bool(balancer.escalated)
    assert int(balancer.escalated_at) < 4
