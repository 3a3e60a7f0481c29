"""tools/train.py and tools/test.py: their command lines, train -> resume -> test, and the
one-line errors of bad input (config keys and files, checkpoints, a busy work dir, a full disk),
on a toy regression config whose classes (test_checkpoint's) are registered here in a registry
scope of their own, imported by the config through ``custom_imports``: nothing here depends on
the project's models.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import DATASETS, HOOKS, METRICS, MODELS, Registry
from mmengine.runner.checkpoint import _load_checkpoint

from adperception.engine import (
    MTLRunner,
    UserError,
    build_runner,
    dump_metrics,
    enable_amp,
    hold_work_dir,
    select_dist_backend,
    set_resume,
    set_work_dir,
    setup_runtime,
)
from tests.engine.test_checkpoint import LinearModel, MeanSquaredError, Regression
from tests.tools_for_tests import load_tool

ROOT = Path(__file__).resolve().parents[2]
SCOPE = "adperception_test_tools"
TOY_MODELS = Registry("model", parent=MODELS, scope=SCOPE)
TOY_DATASETS = Registry("dataset", parent=DATASETS, scope=SCOPE)
TOY_METRICS = Registry("metric", parent=METRICS, scope=SCOPE)
TOY_HOOKS = Registry("hook", parent=HOOKS, scope=SCOPE)
TOY_MODELS.register_module(module=LinearModel)
TOY_DATASETS.register_module(module=Regression)
TOY_METRICS.register_module(module=MeanSquaredError)


@TOY_HOOKS.register_module()
class RecordIters(Hook):
    """Appends every training iteration's number to ``{work_dir}/iters.txt``."""

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        with open(Path(runner.work_dir) / "iters.txt", "a") as f:
            f.write(f"{runner.iter + 1}\n")


TOY_CONFIG = f"""
custom_imports = dict(imports=["tests.engine.test_tools"], allow_failed_imports=False)
default_scope = "adperception"
loader = dict(batch_size=4, num_workers=0, collate_fn=dict(type="default_collate"),
              dataset=dict(type="{SCOPE}.Regression"))
model = dict(type="{SCOPE}.LinearModel")
train_dataloader = dict(sampler=dict(type="InfiniteSampler", shuffle=True), **loader)
val_dataloader = dict(sampler=dict(type="DefaultSampler", shuffle=False), **loader)
test_dataloader = val_dataloader
val_evaluator = dict(type="{SCOPE}.MeanSquaredError")
test_evaluator = val_evaluator
train_cfg = dict(by_epoch=False, max_iters=4, val_interval=2)
val_cfg = dict()
test_cfg = dict()
optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.05))
param_scheduler = [dict(type="MultiStepLR", milestones=[3], by_epoch=False)]
default_hooks = dict(
    checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False, max_keep_ckpts=1),
    logger=dict(type="LoggerHook", interval=1),
)
custom_hooks = [dict(type="{SCOPE}.RecordIters")]
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="nccl"))
randomness = dict(seed=0)
log_level = "WARNING"
"""


@pytest.fixture
def toy_config(tmp_path, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(ROOT))
    path = tmp_path / "toy_regression.py"
    path.write_text(TOY_CONFIG)
    return path


@pytest.mark.parametrize(
    ("tool", "options"),
    [
        ("train", ["--work-dir", "--resume", "--amp", "--cfg-options", "--launcher"]),
        ("test", ["checkpoint", "--out", "--work-dir", "--cfg-options", "--launcher"]),
    ],
)
def test_help(tool: str, options: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / f"{tool}.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
    for option in options:
        assert option in result.stdout


def test_train_resume_test(toy_config, tmp_path) -> None:
    """Train 4 iterations, resume to 6 from last_checkpoint, then evaluate the final checkpoint;
    the JSON holds the MSE of those weights, recomputed here."""
    train, test = load_tool("train"), load_tool("test")
    work_dir = tmp_path / "work"
    common = [str(toy_config), "--work-dir", str(work_dir), "--cfg-options"]
    train.main([*common, f"experiment_name=a{uuid.uuid4().hex}"])
    assert (work_dir / "last_checkpoint").read_text() == str(work_dir / "iter_4.pth")
    train.main(
        [*common, f"experiment_name=b{uuid.uuid4().hex}", "train_cfg.max_iters=6", "--resume"]
    )
    assert (work_dir / "iters.txt").read_text().split() == ["1", "2", "3", "4", "5", "6"]
    checkpoint = str(work_dir / "iter_6.pth")
    assert (work_dir / "last_checkpoint").read_text() == checkpoint
    assert not (work_dir / "iter_4.pth").exists()  # max_keep_ckpts=1

    out = tmp_path / "metrics" / "metrics.json"
    test.main(
        [str(toy_config), checkpoint, "--out", str(out), "--work-dir", str(tmp_path / "test")]
        + ["--cfg-options", f"experiment_name=c{uuid.uuid4().hex}"]
    )
    state = _load_checkpoint(checkpoint, map_location="cpu")["state_dict"]
    data = Regression()
    expected = (data.x @ state["fc.weight"].T + state["fc.bias"] - data.y).pow(2).mean()
    metrics = json.loads(out.read_text())
    assert metrics == {"toy/mse": pytest.approx(expected.item(), rel=1e-5), "toy/count": 16}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_dist_train_on_cpu_processes(toy_config, tmp_path) -> None:
    """tools/dist_train.sh with two processes and the config's nccl: gloo and DDP on CPU."""
    work_dir = tmp_path / "work"
    env = {**os.environ, "PYTHON": sys.executable, "MASTER_PORT": str(free_port())}
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "dist_train.sh"), str(toy_config), "2"]
        + ["--work-dir", str(work_dir), "--cfg-options", "train_cfg.max_iters=2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work_dir / "iters.txt").read_text().split() == ["1", "1", "2", "2"]
    assert (work_dir / "last_checkpoint").read_text() == str(work_dir / "iter_2.pth")


def test_runner_type_defaults_to_mtl_runner(toy_config, tmp_path) -> None:
    setup_runtime()
    cfg = Config.fromfile(toy_config)
    cfg.work_dir = str(tmp_path)
    cfg.experiment_name = f"d{uuid.uuid4().hex}"
    assert type(build_runner(cfg)) is MTLRunner


def test_set_work_dir(toy_config) -> None:
    cfg = Config.fromfile(toy_config)
    set_work_dir(cfg, None)
    assert cfg.work_dir == "./work_dirs/toy_regression"
    cfg.work_dir = "from_config"
    set_work_dir(cfg, None)
    assert cfg.work_dir == "from_config"
    set_work_dir(cfg, "from_cli")
    assert cfg.work_dir == "from_cli"


@pytest.mark.parametrize(
    ("resume", "expected"),
    [(None, (False, None)), ("auto", (True, None)), ("a/iter_4.pth", (True, "a/iter_4.pth"))],
)
def test_set_resume(resume, expected) -> None:
    cfg = Config(dict(resume=False, load_from=None))
    set_resume(cfg, resume)
    assert (cfg.resume, cfg.load_from) == expected


def test_amp_is_ignored_without_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = Config(dict(optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=1))))
    with pytest.warns(UserWarning, match="CUDA is not available"):
        assert not enable_amp(cfg)
    assert cfg.optim_wrapper.type == "OptimWrapper"


@pytest.fixture
def with_cuda(monkeypatch) -> None:
    """``torch.cuda.is_available()`` is True; mmengine's logger, which would ask for a device
    then, exists beforehand."""
    MMLogger.get_current_instance()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


class ScaledWrapper(AmpOptimWrapper):
    """A project wrapper that already is an AmpOptimWrapper."""


class SkippingWrapper(OptimWrapper):
    """A project wrapper with a registered AMP counterpart."""

    amp_variant = "SkippingAmpWrapper"


@pytest.mark.parametrize(
    ("wrapper", "expected"),
    [
        (None, "AmpOptimWrapper"),
        ("OptimWrapper", "AmpOptimWrapper"),
        ("AmpOptimWrapper", "AmpOptimWrapper"),
        (ScaledWrapper, ScaledWrapper),
        (SkippingWrapper, "SkippingAmpWrapper"),
    ],
)
def test_amp_switches_the_wrapper_with_cuda(with_cuda, wrapper, expected) -> None:
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type="SGD", lr=1))))
    if wrapper is not None:
        cfg.optim_wrapper.type = wrapper
    assert enable_amp(cfg)
    assert cfg.optim_wrapper.type == expected
    assert cfg.optim_wrapper.loss_scale == "dynamic"


def test_amp_refuses_other_wrappers(with_cuda) -> None:
    cfg = Config(dict(optim_wrapper=dict(type="OptimWrapperDict")))
    with pytest.raises(ValueError, match="'OptimWrapperDict' is no AmpOptimWrapper"):
        enable_amp(cfg)


@pytest.mark.parametrize(("cuda", "backend"), [(False, "gloo"), (True, "nccl")])
def test_dist_backend(monkeypatch, cuda: bool, backend: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend="nccl"))))
    select_dist_backend(cfg)
    assert cfg.env_cfg.dist_cfg.backend == backend


def test_dump_metrics_writes_plain_json(tmp_path) -> None:
    metrics = {"seg/mIoU": np.float32(0.25), "det/mAP": 0.5, "n": np.int64(3)}
    metrics["depth/rmse"] = torch.tensor(1.5)
    dump_metrics(metrics, str(tmp_path / "m.json"))
    loaded = json.loads((tmp_path / "m.json").read_text())
    assert loaded == {"seg/mIoU": 0.25, "det/mAP": 0.5, "n": 3, "depth/rmse": 1.5}
    with pytest.raises(TypeError, match="type object is not JSON serialisable"):
        dump_metrics({"bad": object()}, str(tmp_path / "bad.json"))


@pytest.fixture(scope="module")
def trained_toy(tmp_path_factory) -> tuple[Path, Path]:
    """The toy config and a work dir trained for 4 iterations (iter_4.pth)."""
    root = tmp_path_factory.mktemp("trained_toy")
    config = root / "toy_regression.py"
    config.write_text(TOY_CONFIG)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT))
        work_dir = root / "work"
        options = ["--cfg-options", f"experiment_name=t{uuid.uuid4().hex}"]
        assert load_tool("train").main([str(config), "--work-dir", str(work_dir), *options]) == 0
        yield config, work_dir


def run(tool: str, capsys, *args: object) -> tuple[int, str]:
    """``tools/{tool}.py``'s exit status on ``args`` and what it wrote to stderr; each run gets an
    experiment name of its own (mmengine's loggers are per name)."""
    argv = [str(arg) for arg in args]
    if "--cfg-options" not in argv:
        argv.append("--cfg-options")
    argv.insert(argv.index("--cfg-options") + 1, f"experiment_name=e{uuid.uuid4().hex}")
    code = load_tool(tool).main(argv)
    return code, capsys.readouterr().err


def test_resume_never_evaluates_config_text_from_a_checkpoint(trained_toy, tmp_path, capsys):
    """mmengine's resume runs ``meta['config']`` through ``Config.fromstring``: Python code that
    the weights_only allow-list lets through, as a string."""
    config, trained = trained_toy
    work_dir = tmp_path / "work"
    shutil.copytree(trained, work_dir)
    marker = tmp_path / "evaluated"
    payload = "evaluated = open({!r}, 'w').write('code from the checkpoint ran')\n"
    checkpoint = _load_checkpoint(str(work_dir / "iter_4.pth"), map_location="cpu")
    checkpoint["meta"]["config"] = payload.format(str(marker))
    evil = work_dir / "evil.pth"
    torch.save(checkpoint, evil)
    Config.fromstring(payload.format(str(tmp_path / "would_run")), file_format=".py")
    assert (tmp_path / "would_run").exists()  # the payload is code mmengine would execute

    common = [config, "--work-dir", work_dir]
    code, err = run(
        "train", capsys, *common, "--resume", evil, "--cfg-options", "train_cfg.max_iters=6"
    )
    assert code == 0, err
    assert not marker.exists()
    assert (work_dir / "iters.txt").read_text().split() == ["1", "2", "3", "4", "5", "6"]
    code, err = run("test", capsys, config, evil, "--work-dir", tmp_path / "test")
    assert code == 0, err
    assert not marker.exists()


def test_test_refuses_a_checkpoint_of_another_config(toy_config, tmp_path, capsys) -> None:
    checkpoint = tmp_path / "other.pth"
    state = {"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2), "fc2.bias": torch.zeros(1)}
    torch.save(dict(state_dict=state, meta=dict(iter=4)), checkpoint)
    out = tmp_path / "metrics.json"
    code, err = run("test", capsys, toy_config, checkpoint, "--out", out, "--work-dir", tmp_path)
    assert code == 2
    assert err == (
        f"error: checkpoint {checkpoint} does not fit config {toy_config}: 2 entries differ in "
        "shape, first: fc.weight (checkpoint [2, 3] vs model [1, 3]), fc.bias (checkpoint [2] "
        "vs model [1]); 1 entries the model lacks: fc2.bias\n"
    )
    assert not out.exists()
    torch.save(dict(state_dict={"fc.weight": torch.zeros(1, 3)}), checkpoint)
    code, err = run("test", capsys, toy_config, checkpoint, "--work-dir", tmp_path)
    assert code == 2
    assert err.endswith(": 1 model entries missing from the checkpoint: fc.bias\n")


def test_a_truncated_checkpoint_is_named(trained_toy, tmp_path, capsys) -> None:
    config, trained = trained_toy
    data = (trained / "iter_4.pth").read_bytes()
    checkpoint = tmp_path / "iter_4.pth"
    checkpoint.write_bytes(data[: len(data) // 2])
    expected = f"error: cannot read checkpoint {checkpoint} (truncated, damaged or not a torch "
    code, err = run("test", capsys, config, checkpoint, "--work-dir", tmp_path / "test")
    assert code == 2
    assert err.startswith(expected) and err.count("\n") == 1, err
    code, again = run("train", capsys, config, "--work-dir", tmp_path / "w", "--resume", checkpoint)
    assert (code, again) == (2, err)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("model.balancer.type=PCGradd", "model.balancer.type: unknown balancer 'PCGradd' ("),
        ("optim_wrapper.optimizer.lr=-0.05", "optim_wrapper.optimizer.lr = -0.05: a learning"),
        ("train_cfg.max_iters=0", "train_cfg.max_iters = 0: must be a positive integer"),
    ],
)
def test_config_mistakes_name_the_key(toy_config, tmp_path, capsys, option, message) -> None:
    work_dir = tmp_path / "work"
    code, err = run("train", capsys, toy_config, "--work-dir", work_dir, "--cfg-options", option)
    assert code == 2
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not list(work_dir.glob("*.pth"))


def test_config_file_mistakes_name_the_file(tmp_path, capsys) -> None:
    config = tmp_path / "typo.py"
    config.write_text(TOY_CONFIG.replace("val_cfg = dict()", "val_cfg = dict(("))
    line = TOY_CONFIG.splitlines().index("val_cfg = dict()") + 1
    for tool, extra in (("train", []), ("test", ["ckpt.pth"])):
        code, err = run(tool, capsys, config, *extra)
        assert code == 2
        assert err == f"error: {config}, line {line}: syntax error: '(' was never closed\n"
    code, err = run("train", capsys, tmp_path / "absent.py")
    assert (code, err) == (2, f"error: {tmp_path / 'absent.py'}: no such config file\n")


def test_a_full_disk_names_the_checkpoint(toy_config, tmp_path, capsys, monkeypatch) -> None:
    def put(self, obj: bytes, filepath) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(LocalBackend, "put", put)
    work_dir = tmp_path / "work"
    code, err = run("train", capsys, toy_config, "--work-dir", work_dir)
    assert code == 2
    assert err.startswith(f"error: cannot write {work_dir / 'iter_2.pth'}: No space left on dev")
    assert err.endswith(f" MiB free in {work_dir})\n")
    assert not list(work_dir.glob(".*.tmp"))


HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_run_into_a_work_dir_in_use_fails(toy_config, tmp_path, capsys) -> None:
    """While another process holds the work dir, training there fails naming it; once that
    process is gone, its lock file blocks nothing."""
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    lock = work_dir / "train.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
        code, err = run("train", capsys, toy_config, "--work-dir", work_dir)
        assert code == 2
        assert err == (
            f"error: work dir {work_dir} is in use by another training run (pid {holder.pid}, "
            f"which holds {lock}); wait for it to end or choose another --work-dir\n"
        )
        assert not (work_dir / "iters.txt").exists()
    finally:
        holder.communicate(b"")
    assert lock.read_text() == f"{holder.pid}\n"
    code, err = run("train", capsys, toy_config, "--work-dir", work_dir)
    assert code == 0, err
    assert (work_dir / "last_checkpoint").read_text() == str(work_dir / "iter_4.pth")


def test_the_work_dir_lock_is_released_and_taken_by_rank_0_only(tmp_path, monkeypatch) -> None:
    with hold_work_dir(str(tmp_path)):
        with pytest.raises(
            UserError, match=rf"in use by another training run \(pid {os.getpid()},"
        ):
            with hold_work_dir(str(tmp_path)):
                pass
        monkeypatch.setenv("RANK", "1")  # another rank of the same torchrun job
        with hold_work_dir(str(tmp_path), "pytorch"):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(UserError):
            with hold_work_dir(str(tmp_path), "pytorch"):
                pass
    with hold_work_dir(str(tmp_path)):
        pass


def test_training_removes_the_temporaries_of_killed_writes(toy_config, tmp_path, capsys) -> None:
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    stale = work_dir / f".iter_2.pth.{process.pid}.tmp"
    stale.write_bytes(b"half a checkpoint")
    code, err = run("train", capsys, toy_config, "--work-dir", work_dir)
    assert code == 0, err
    assert not stale.exists()
