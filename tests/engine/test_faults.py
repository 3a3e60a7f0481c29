"""Faults under DDP, through tools/dist_train.sh (torchrun, tools/train.py, the runner) on two
gloo ranks: a NaN on one rank is skipped on both, a rank that dies ends the job, a rank that
hangs times the other out. The model is the balancing tests' branched regressor, registered in
a scope of this module's own and imported by the config through ``custom_imports``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import DATASETS, HOOKS, MODELS, Registry
from mmengine.runner.checkpoint import _load_checkpoint

from adperception.engine import install_checkpoint_allowlist
from tests.balancing.models_for_tests import BranchedRegressor, batch
from tests.engine.test_tools import free_port

ROOT = Path(__file__).resolve().parents[2]
SCOPE = "adperception_test_faults"
FAULT_MODELS = Registry("model", parent=MODELS, scope=SCOPE)
FAULT_DATASETS = Registry("dataset", parent=DATASETS, scope=SCOPE)
FAULT_HOOKS = Registry("hook", parent=HOOKS, scope=SCOPE)
FAULT_MODELS.register_module(module=BranchedRegressor)


@FAULT_DATASETS.register_module()
class Regressions(torch.utils.data.Dataset):
    """The branched regressor's conflicting targets, one sample per index."""

    def __init__(self, size: int = 64) -> None:
        data = batch(0, size=size)
        self.x, self.y = data["inputs"], data["data_samples"]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: int) -> dict:
        return dict(inputs=self.x[idx], data_samples=self.y[idx])


def _model(runner) -> torch.nn.Module:
    return runner.model.module if is_model_wrapper(runner.model) else runner.model


@FAULT_HOOKS.register_module()
class Fault(Hook):
    """At iteration ``iteration`` (1-based) on rank ``rank``: ``'nan'`` makes head ``task``'s
    output NaN, ``'kill'`` SIGKILLs the process after the step, ``'hang'`` sleeps in it."""

    priority = "LOWEST"  # after CheckpointHook

    def __init__(self, kind: str, iteration: int, rank: int = 1, task: str = "a") -> None:
        self.kind, self.iteration, self.rank, self.task = kind, iteration, rank, task
        self._handle = None

    def _armed(self, runner) -> bool:
        return runner.iter + 1 == self.iteration and get_rank() == self.rank

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if self.kind == "nan" and self._armed(runner):
            head = _model(runner).heads[self.task]
            self._handle = head.register_forward_hook(lambda m, i, out: out * float("nan"))
        if self.kind == "hang" and self._armed(runner):
            time.sleep(600)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.kind == "kill" and self._armed(runner):
            os.kill(os.getpid(), signal.SIGKILL)


@FAULT_HOOKS.register_module()
class RecordRank(Hook):
    """Each rank's final weights, skipped steps and the kinds of its steps, in the work dir."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        model = _model(runner)
        self.kinds.append(model.balancer.plan(model))

    def after_train(self, runner) -> None:
        model = _model(runner)
        out = Path(runner.work_dir)
        torch.save(
            {k: v.detach() for k, v in model.state_dict().items()}, out / f"r{get_rank()}.pt"
        )
        record = dict(skipped=runner.optim_wrapper.skipped_steps, kinds=self.kinds)
        (out / f"r{get_rank()}.json").write_text(json.dumps(record))


CONFIG = f"""
custom_imports = dict(imports=["tests.engine.test_faults"], allow_failed_imports=False)
default_scope = "adperception"
model = dict(type="{SCOPE}.BranchedRegressor", balancer={{balancer}})
train_dataloader = dict(batch_size=4, num_workers=0, collate_fn=dict(type="default_collate"),
                        sampler=dict(type="InfiniteSampler", shuffle=True),
                        dataset=dict(type="{SCOPE}.Regressions"))
train_cfg = dict(by_epoch=False, max_iters=6)
optim_wrapper = dict(type="MTLOptimWrapper", constructor="MTLOptimWrapperConstructor",
                     optimizer=dict(type="SGD", lr=0.05), max_consecutive_nonfinite=2)
default_hooks = dict(
    checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False, max_keep_ckpts=1),
    logger=dict(type="LoggerHook", interval=1),
)
custom_hooks = [dict(type="{SCOPE}.RecordRank"), dict(type="{SCOPE}.Fault", {{fault}})]
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="gloo", timeout={{timeout}}))
randomness = dict(seed=0)
log_level = "INFO"
"""


def dist_train(
    tmp_path: Path,
    fault: str,
    balancer: str = "dict(type='EqualWeighting')",
    pg_timeout: int = 60,
) -> subprocess.CompletedProcess:
    """Six iterations on two ranks with ``Fault(fault)``; the job must end within 4 minutes."""
    config = tmp_path / "faults.py"
    config.write_text(CONFIG.format(balancer=balancer, fault=fault, timeout=pg_timeout))
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "MASTER_PORT": str(free_port()),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        ["bash", str(ROOT / "tools" / "dist_train.sh"), str(config), "2"]
        + ["--work-dir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=ROOT,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
@pytest.mark.parametrize(
    ("balancer", "kind"),
    [
        ("dict(type='EqualWeighting')", "weighted"),
        ("dict(type='PCGrad')", "task_gradients"),
        ("dict(type='MGDA', surgery_interval=2)", "amortised"),
    ],
)
def test_a_nan_on_one_rank_is_skipped_on_both(tmp_path: Path, balancer: str, kind: str) -> None:
    """Rank 1's head a returns NaN at iteration 4; both ranks skip that step, say so, go on
    and end with identical weights."""
    result = dist_train(tmp_path, "kind='nan', iteration=4", balancer=balancer)
    assert result.returncode == 0, result.stderr[-3000:]
    work = tmp_path / "work"
    records = [json.loads((work / f"r{r}.json").read_text()) for r in range(2)]
    assert [r["skipped"] for r in records] == [1, 1]
    assert records[0]["kinds"][3] == records[1]["kinds"][3] == kind
    states = [torch.load(work / f"r{r}.pt", weights_only=True) for r in range(2)]
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    assert all(bool(torch.isfinite(v).all()) for v in states[0].values() if v.is_floating_point())
    assert int(states[0]["balancer.num_steps"]) == 6
    (log,) = work.glob("*/*.log")
    assert "non-finite loss of task(s) ['a'] at iteration 4 (on at least one rank)" in (
        log.read_text()
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_a_rank_killed_mid_run_ends_the_job_and_leaves_the_last_checkpoint(
    tmp_path: Path,
) -> None:
    result = dist_train(tmp_path, "kind='kill', iteration=3")
    assert result.returncode != 0
    assert "Signals.SIGKILL" in result.stderr or "SIGKILL" in result.stderr
    work = tmp_path / "work"
    assert (work / "last_checkpoint").read_text() == str(work / "iter_2.pth")
    install_checkpoint_allowlist()
    checkpoint = _load_checkpoint(str(work / "iter_2.pth"), map_location="cpu")
    assert checkpoint["meta"]["iter"] == 2
    assert int(checkpoint["state_dict"]["balancer.num_steps"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_a_hanging_rank_times_the_other_out(tmp_path: Path) -> None:
    """Rank 1 sleeps in iteration 3; rank 0's next collective gives up after the process
    group's timeout (env_cfg.dist_cfg.timeout, 5 s here) instead of waiting for it."""
    result = dist_train(tmp_path, "kind='hang', iteration=3", pg_timeout=5)
    assert result.returncode != 0
    assert "timed out" in result.stderr.lower() or "timeout" in result.stderr.lower()
