"""End to end on the quickstart network: train, test, resume after a kill, skip non-finite steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adperception.data.synth import generate_dataset
from tests.engine.test_tools import free_port

ROOT = Path(__file__).resolve().parents[2]
METRIC_KEYS = {
    "det/mAP",
    "det/mAP_50",
    "seg/mIoU",
    "seg/aAcc",
    "depth/abs_err",
    "depth/abs_rel",
    "depth/rmse",
    "depth/delta1",
    "normals/mean",
    "normals/median",
    "normals/within_11.25",
    "normals/within_22.5",
    "normals/within_30",
}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart config on a 6 + 2 sample SynthDrive tree at 64×128, 2 images per batch:
    an epoch is 3 iterations, so iteration 2 is mid-epoch."""
    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(root / "data", {"train": 6, "val": 2}, seed=3, height=64, width=128)
    config = root / "tiny.py"
    config.write_text(f"""
_base_ = [{str(ROOT / "configs/quickstart.py")!r}]
data_root = {str(root / "data")!r}
train_pipeline = [
    dict(type="RandomResize", scale=(128, 64), ratio_range=(1.0, 1.5)),
    dict(type="RandomCrop", crop_size=(64, 128)),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackMTLInputs"),
]
test_pipeline = [dict(type="PackMTLInputs")]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline),
)
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline),
)
test_dataloader = val_dataloader
param_scheduler = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=4)]
train_cfg = dict(max_iters=4, val_interval=4)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, max_keep_ckpts=3))
""")
    return config


def run_tool(*args: str | Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_train_then_test_writes_every_metric(tiny_config: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    done = run_tool("tools/train.py", tiny_config, "--work-dir", work)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loss_det" in done.stdout + done.stderr  # per-task losses are logged
    out = tmp_path / "metrics.json"
    done = run_tool(
        "tools/test.py",
        tiny_config,
        work / "iter_4.pth",
        "--out",
        out,
        "--show-dir",
        tmp_path / "show",
        "--show-num",
        "1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert set(metrics) == METRIC_KEYS
    assert 0 <= metrics["seg/aAcc"] <= 100 and metrics["depth/rmse"] > 0
    assert len(list((tmp_path / "show").glob("*.png"))) == 1


def test_resume_after_a_kill_is_bit_exact(tiny_config: Path, tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run_tool("tools/train.py", tiny_config, "--work-dir", straight).returncode == 0
    crashing = tmp_path / "crashing.py"
    crashing.write_text(f"""
_base_ = [{str(tiny_config)!r}]
custom_imports = dict(imports=["tests.engine.hooks_for_tests"], allow_failed_imports=False)
custom_hooks = [dict(type="CrashAfterIterHook", iteration=2)]
""")
    first = run_tool("tools/train.py", crashing, "--work-dir", killed)
    assert first.returncode == 3, first.stderr[-3000:]
    assert (killed / "iter_2.pth").exists() and not (killed / "iter_4.pth").exists()
    resumed = run_tool("tools/train.py", tiny_config, "--work-dir", killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Advance dataloader 2 steps" in resumed.stdout + resumed.stderr
    a, b = weights(straight / "iter_4.pth"), weights(killed / "iter_4.pth")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # and the run did train: the weights moved from iteration 2 to 4
    mid = weights(killed / "iter_2.pth")
    assert not all(torch.equal(mid[k], b[k]) for k in b)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_ddp_ranks_agree_and_equal_one_process_with_the_doubled_batch(
    tiny_config: Path, tmp_path: Path
) -> None:
    """2 gloo ranks × 1 image vs 1 process × 2 images, 3 SGD steps of the segmentation network
    (every SynthDrive pixel is labelled, so each rank's mean loss has the same pixel count and
    DDP's gradient average is the doubled batch's gradient). No random augmentation or dropout,
    so both runs see the same pixels."""
    config = tmp_path / "seg.py"
    config.write_text(f"""
_base_ = [{str(tiny_config)!r}]
model = dict(
    backbone=dict(branches=dict(_delete_=True, seg=["seg"])),
    heads=dict(_delete_=True, seg=dict(type="SegmentationHead", in_channels=256, channels=32,
                                       dropout_ratio=0.0)),
)
train_dataloader = dict(dataset=dict(pipeline=[dict(type="PackMTLInputs")]))
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type="SGD", lr=0.05, momentum=0.9, weight_decay=0.0)
)
param_scheduler = []
train_cfg = dict(max_iters=3, val_interval=100)
val_evaluator = dict(type="MultiTaskMetric", tasks=("seg",))
custom_imports = dict(imports=["tests.engine.hooks_for_tests"], allow_failed_imports=False)
custom_hooks = [dict(type="DumpWeightsHook")]
""")
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), PYTHON=sys.executable, MASTER_PORT=str(free_port())
    )
    ddp = subprocess.run(
        [
            "bash",
            "tools/dist_train.sh",
            str(config),
            "2",
            "--work-dir",
            str(tmp_path / "ddp"),
            "--cfg-options",
            "train_dataloader.batch_size=1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_tool("tools/train.py", config, "--work-dir", tmp_path / "one")
    assert single.returncode == 0, single.stderr[-3000:]
    rank0 = torch.load(tmp_path / "ddp/rank0.pth")
    rank1 = torch.load(tmp_path / "ddp/rank1.pth")
    one = torch.load(tmp_path / "one/rank0.pth")
    assert "Iter(train) [3/3]" in single.stdout + single.stderr
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    for key in rank0:
        torch.testing.assert_close(rank0[key], one[key], rtol=1e-4, atol=1e-6)
