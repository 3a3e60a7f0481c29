"""Checkpoints of real mmengine runners (a linear regression on random tensors): loading under
``weights_only=True`` through mmengine's own load path, and crash-safe writing."""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer, MMLogger
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint

from adperception.engine import (
    CheckpointError,
    MTLRunner,
    UserError,
    check_state_dict_fits,
    checkpoint_safe_globals,
    install_checkpoint_allowlist,
    read_checkpoint,
)
from adperception.engine.checkpoint import (
    TEMPORARY,
    history_buffer_statistic,
    remove_stale_temporaries,
    temporary_path,
    write_bytes_durably,
)

INTERVAL = 3


class Regression(torch.utils.data.Dataset):
    """16 samples of y = x · (1, -2, 3) + 0.5."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 3, generator=gen)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [3.0]]) + 0.5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: int) -> dict:
        return dict(inputs=self.x[idx], targets=self.y[idx])


class LinearModel(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 1)

    def forward(self, inputs, targets, mode: str = "tensor"):
        error = self.fc(inputs) - targets
        if mode == "loss":
            return dict(loss=error.pow(2).mean())
        return [dict(squared_error=e) for e in error.pow(2).flatten().tolist()]


class MeanSquaredError(BaseMetric):
    """Returns numpy scalars, as many metrics do, so that they reach the message hub."""

    default_prefix = "toy"

    def process(self, data_batch, data_samples) -> None:
        self.results.extend(s["squared_error"] for s in data_samples)

    def compute_metrics(self, results: list) -> dict:
        return dict(mse=np.float64(np.mean(results)), count=np.int64(len(results)))


class CountIters(Hook):
    """Records the 1-based number of every training iteration run (as in ``iter_{n}.pth``)."""

    def __init__(self) -> None:
        self.iters: list[int] = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.iters.append(runner.iter + 1)


def make_runner(
    runner_cls: type[Runner],
    work_dir,
    *,
    max_iters: int,
    resume: bool = False,
    load_from: str | None = None,
    max_keep: int = -1,
) -> Runner:
    """Iteration-based training with warm-up + step LR schedulers, validation and a
    best-checkpoint metric: every kind of state mmengine puts in a checkpoint."""
    loader = dict(batch_size=4, num_workers=0, collate_fn=dict(type="default_collate"))
    return runner_cls(
        model=LinearModel(),
        work_dir=str(work_dir),
        experiment_name=f"test_{uuid.uuid4().hex}",
        train_dataloader=dict(
            dataset=Regression(), sampler=dict(type="InfiniteSampler", shuffle=True), **loader
        ),
        val_dataloader=dict(
            dataset=Regression(), sampler=dict(type="DefaultSampler", shuffle=False), **loader
        ),
        val_evaluator=[MeanSquaredError()],
        val_cfg=dict(),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=INTERVAL),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.05, momentum=0.9)),
        param_scheduler=[
            dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=2),
            dict(type="MultiStepLR", milestones=[4], by_epoch=False),
        ],
        default_hooks=dict(
            checkpoint=dict(
                type="CheckpointHook",
                interval=INTERVAL,
                by_epoch=False,
                max_keep_ckpts=max_keep,
                save_best="toy/mse",
                rule="less",
            ),
            logger=dict(type="LoggerHook", interval=1),
        ),
        custom_hooks=[CountIters()],
        resume=resume,
        load_from=load_from,
        randomness=dict(seed=0),
        log_level="WARNING",
    )


def iters_run(runner: Runner) -> list[int]:
    return next(hook for hook in runner.hooks if isinstance(hook, CountIters)).iters


def last_checkpoint(work_dir) -> str:
    return (work_dir / "last_checkpoint").read_text()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Runner, object]:
    """A plain mmengine Runner trained for two checkpoint intervals."""
    work_dir = tmp_path_factory.mktemp("plain")
    runner = make_runner(Runner, work_dir, max_iters=2 * INTERVAL)
    runner.train()
    return runner, work_dir


def test_mmengine_checkpoint_fails_without_the_allowlist(trained) -> None:
    """Fresh process, so that the allow-list installed by the other tests is absent."""
    _, work_dir = trained
    code = (
        "import sys\nfrom mmengine.runner.checkpoint import _load_checkpoint\n"
        "_load_checkpoint(sys.argv[1], map_location='cpu')\n"
    )
    path = str(work_dir / f"iter_{2 * INTERVAL}.pth")
    result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True)
    assert result.returncode != 0
    assert "UnpicklingError: Weights only load failed" in result.stderr
    assert "mmengine.logging.history_buffer.HistoryBuffer" in result.stderr


def test_allowlist_covers_every_global_of_the_checkpoint(trained) -> None:
    _, work_dir = trained
    allowed = {
        entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
        for entry in checkpoint_safe_globals()
    }
    # what torch reports as unsafe excludes what is allow-listed already (by other tests)
    installed = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        for path in work_dir.glob("*.pth"):
            found = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
            assert "mmengine.logging.history_buffer.HistoryBuffer" in found
            assert found <= allowed, found - allowed
    finally:
        torch.serialization.add_safe_globals(installed)


def test_mmengine_checkpoint_loads_with_the_allowlist(trained) -> None:
    runner, work_dir = trained
    install_checkpoint_allowlist()
    checkpoint = _load_checkpoint(str(work_dir / f"iter_{2 * INTERVAL}.pth"), map_location="cpu")
    for name, value in runner.model.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][name], value)
    hub = checkpoint["message_hub"]
    loss = hub["log_scalars"]["train/loss"]
    assert isinstance(loss, HistoryBuffer)
    assert np.array_equal(loss.data[0], runner.message_hub.get_scalar("train/loss").data[0])
    assert loss.statistics("mean") == pytest.approx(np.mean(loss.data[0]))
    assert hub["runtime_info"]["best_score"] == runner.message_hub.get_info("best_score")
    assert checkpoint["meta"]["iter"] == 2 * INTERVAL
    milestones = checkpoint["param_schedulers"][1]["milestones"]
    assert milestones == Counter({4: 1})


def test_resume_from_a_plain_mmengine_checkpoint(trained, tmp_path) -> None:
    _, work_dir = trained
    install_checkpoint_allowlist()
    checkpoint = str(work_dir / f"iter_{2 * INTERVAL}.pth")
    runner = make_runner(
        MTLRunner, tmp_path, max_iters=3 * INTERVAL, resume=True, load_from=checkpoint
    )
    runner.train()
    assert iters_run(runner) == list(range(2 * INTERVAL + 1, 3 * INTERVAL + 1))


class Payload:
    """Any class the allow-list does not name."""


class StatisticsImpostor:
    """Pickles as ``getattr(HistoryBuffer, "update")``: getattr, but not a statistic."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, "update")


class NdarrayImpostor:
    """Pickles as ``getattr(np.ndarray, "tofile")``."""

    def __reduce__(self):
        return getattr, (np.ndarray, "tofile")


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (Payload(), "Unsupported global: GLOBAL tests.engine.test_checkpoint.Payload"),
        (StatisticsImpostor(), "only HistoryBuffer statistics"),
        (NdarrayImpostor(), "only HistoryBuffer statistics"),
        (np.array([1, "a"], dtype=object), "ObjectDType"),
        (os.system, "module (posix|nt) is blocked"),
    ],
    ids=["custom_class", "history_buffer_method", "ndarray_method", "object_array", "os"],
)
def test_other_globals_are_rejected(tmp_path, payload, error) -> None:
    install_checkpoint_allowlist()
    path = tmp_path / "evil.pth"
    torch.save(dict(state_dict={}, extra=payload), path)
    with pytest.raises(pickle.UnpicklingError, match=error):
        _load_checkpoint(str(path), map_location="cpu")


def test_history_buffer_statistic_is_getattr_for_statistics_only() -> None:
    assert history_buffer_statistic(HistoryBuffer, "mean") is HistoryBuffer.mean
    with pytest.raises(pickle.UnpicklingError):
        history_buffer_statistic(HistoryBuffer, "__init__")


class Crash(Exception):
    """A kill during a write."""


def at_final_save(runner: Runner) -> bool:
    """Whether the runner is saving its last periodic checkpoint (iteration 2 * INTERVAL)."""
    return runner.iter + 1 == 2 * INTERVAL


def crash_in_torch_save(monkeypatch, runner: Runner) -> None:
    """The final ``torch.save`` writes half of its bytes, then dies."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if not at_final_save(runner):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise Crash

    monkeypatch.setattr(torch, "save", save)


def crash_in_file_write(monkeypatch, runner: Runner) -> None:
    """The final checkpoint's file write stops half-way."""
    real_put = LocalBackend.put

    def put(self, obj: bytes, filepath) -> None:
        if not at_final_save(runner):
            return real_put(self, obj, filepath)
        with open(filepath, "wb") as f:
            f.write(obj[: len(obj) // 2])
        raise Crash

    monkeypatch.setattr(LocalBackend, "put", put)


def crash_before_pointer_moves(monkeypatch, runner: Runner) -> None:
    """The final checkpoint is complete; the process dies before last_checkpoint moves to it."""
    real_replace = os.replace

    def replace(src, dst) -> None:
        if os.path.basename(dst) == "last_checkpoint" and at_final_save(runner):
            raise Crash
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize(
    "inject", [crash_in_torch_save, crash_in_file_write, crash_before_pointer_moves]
)
def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, inject) -> None:
    """max_keep_ckpts=1 is the hard case: the previous checkpoint is the only one."""
    install_checkpoint_allowlist()
    runner = make_runner(MTLRunner, tmp_path, max_iters=2 * INTERVAL, max_keep=1)
    with monkeypatch.context() as patch:
        inject(patch, runner)
        with pytest.raises(Crash):
            runner.train()
    previous = str(tmp_path / f"iter_{INTERVAL}.pth")
    assert last_checkpoint(tmp_path) == previous
    assert _load_checkpoint(previous, map_location="cpu")["meta"]["iter"] == INTERVAL
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    for path in tmp_path.glob("*.pth"):  # no partial file anywhere
        assert _load_checkpoint(str(path), map_location="cpu")["meta"]["iter"] % INTERVAL == 0

    resumed = make_runner(MTLRunner, tmp_path, max_iters=2 * INTERVAL, resume=True, max_keep=1)
    resumed.train()
    assert iters_run(resumed) == list(range(INTERVAL + 1, 2 * INTERVAL + 1))
    latest = str(tmp_path / f"iter_{2 * INTERVAL}.pth")
    assert last_checkpoint(tmp_path) == latest
    assert _load_checkpoint(latest, map_location="cpu")["meta"]["iter"] == 2 * INTERVAL
    assert not os.path.exists(previous)


def test_plain_mmengine_runner_loses_its_checkpoint_on_the_same_crash(
    tmp_path, monkeypatch
) -> None:
    """The failure MTLRunner prevents: mmengine deletes the previous checkpoint first, then
    writes the new one in place."""
    runner = make_runner(Runner, tmp_path, max_iters=2 * INTERVAL, max_keep=1)
    with monkeypatch.context() as patch:
        crash_in_file_write(patch, runner)
        with pytest.raises(Crash):
            runner.train()
    assert not (tmp_path / f"iter_{INTERVAL}.pth").exists()
    assert last_checkpoint(tmp_path) == str(tmp_path / f"iter_{INTERVAL}.pth")
    partial = tmp_path / f"iter_{2 * INTERVAL}.pth"
    with pytest.raises(RuntimeError):
        torch.load(partial, map_location="cpu")


def test_a_full_disk_names_the_checkpoint_and_the_free_space(tmp_path, monkeypatch) -> None:
    """OSError(ENOSPC) names neither file nor space; the previous checkpoint stays valid."""
    install_checkpoint_allowlist()
    runner = make_runner(MTLRunner, tmp_path, max_iters=2 * INTERVAL, max_keep=1)
    real_put = LocalBackend.put

    def put(self, obj: bytes, filepath) -> None:
        if at_final_save(runner):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, "put", put)
    with pytest.raises(UserError) as info:
        runner.train()
    message = str(info.value)
    assert message.startswith(f"cannot write {tmp_path / f'iter_{2 * INTERVAL}.pth'}: ")
    free = rf"No space left on device \(\d+\.\d MiB free in {re.escape(str(tmp_path))}\)$"
    assert re.search(free, message)
    assert last_checkpoint(tmp_path) == str(tmp_path / f"iter_{INTERVAL}.pth")
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_while_moving_last_checkpoint_names_it(tmp_path, monkeypatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "last_checkpoint"
    with pytest.raises(UserError, match=rf"^cannot write {path}: No space left on device"):
        write_bytes_durably(str(path), b"iter_3.pth")
    assert not path.exists() and not list(tmp_path.iterdir())


def test_other_write_errors_are_left_alone(tmp_path, monkeypatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        write_bytes_durably(str(tmp_path / "x"), b"")
    assert not isinstance(info.value, UserError)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path) -> None:
    dead = dead_pid()
    stale = [tmp_path / f".iter_4.pth.{dead}.tmp", tmp_path / f".last_checkpoint.{dead}.tmp"]
    live = tmp_path / f".iter_6.pth.{os.getpid()}.tmp"
    others = [tmp_path / "iter_2.pth", tmp_path / f"notes.{dead}.tmp"]
    for path in [*stale, live, *others]:
        path.write_bytes(b"x" * 1000)
    log = tmp_path / "log.txt"
    MMLogger.get_instance(f"stale_{uuid.uuid4().hex}", log_file=str(log), log_level="INFO")
    assert sorted(remove_stale_temporaries(str(tmp_path))) == sorted(map(str, stale))
    assert all(path.exists() for path in [live, *others])
    text = log.read_text()
    assert (
        f"removed {stale[0]} (0.0 MiB): the temporary of a write of iter_4.pth that process "
        f"{dead} did not finish" in text
    )
    assert remove_stale_temporaries(str(tmp_path / "absent")) == []


def test_write_temporaries_match_the_pattern_cleaned_up(tmp_path) -> None:
    path = temporary_path(str(tmp_path / "iter_4.pth"))
    assert TEMPORARY.match(os.path.basename(path))["name"] == "iter_4.pth"
    assert temporary_path("sub/iter_4.pth") == f"sub/.iter_4.pth.{os.getpid()}.tmp"


@pytest.fixture
def saved(tmp_path) -> str:
    path = tmp_path / "ok.pth"
    torch.save(dict(state_dict={"fc.weight": torch.ones(1, 3)}, meta=dict(iter=1)), path)
    return str(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", r"PytorchStreamReader failed reading zip archive"),
        ("empty", r": EOFError$"),
        ("text", r": UnpicklingError: Unsupported operand 110$"),
    ],
)
def test_unreadable_checkpoints_are_named(saved, damage, message) -> None:
    data = Path(saved).read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "empty": b"", "text": b"not a torch file"}[
        damage
    ]
    Path(saved).write_bytes(damaged)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(saved)
    text = str(info.value)
    assert text.startswith(f"cannot read checkpoint {saved} (truncated, damaged or not a torch ")
    assert re.search(message, text) and "\n" not in text


def test_missing_and_refused_checkpoints_are_named(tmp_path) -> None:
    install_checkpoint_allowlist()
    with pytest.raises(CheckpointError, match=rf"^checkpoint {tmp_path}/no.pth: no such file$"):
        read_checkpoint(str(tmp_path / "no.pth"))
    evil = tmp_path / "evil.pth"
    torch.save(dict(state_dict={}, extra=Payload()), evil)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(str(evil))
    assert str(info.value) == (
        f"checkpoint {evil} is refused: it holds objects outside the weights_only allow-list "
        "(Unsupported global: GLOBAL tests.engine.test_checkpoint.Payload)"
    )
    listing = tmp_path / "list.pth"
    torch.save([torch.ones(1)], listing)
    with pytest.raises(CheckpointError, match="holds a list, not a dict of tensors"):
        read_checkpoint(str(listing))


def test_fit_check_names_the_first_differences() -> None:
    expected = {f"layer{i}.weight": torch.zeros(2, 3) for i in range(5)} | {
        "head.bias": torch.zeros(4)
    }
    found = {f"layer{i}.weight": torch.zeros(3, 3) for i in range(5)} | {"old.bias": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        check_state_dict_fits(expected, found, checkpoint="a.pth", config="b.py")
    assert str(info.value) == (
        "checkpoint a.pth does not fit config b.py: 5 entries differ in shape, first: "
        "layer0.weight (checkpoint [3, 3] vs model [2, 3]), layer1.weight (checkpoint [3, 3] vs "
        "model [2, 3]), layer2.weight (checkpoint [3, 3] vs model [2, 3]), ...; 1 model entries "
        "missing from the checkpoint: head.bias; 1 entries the model lacks: old.bias"
    )
    with pytest.raises(CheckpointError, match="^checkpoint a.pth does not fit the model: 5 entr"):
        check_state_dict_fits(expected, found, checkpoint="a.pth", allow_unexpected=True)
    check_state_dict_fits(expected, {**expected, "extra": 1}, checkpoint="a", allow_unexpected=True)
