"""One run on three datasets labelled for different tasks (configs/experiments/mixed_datasets.py):
it trains from batches that mix them, then evaluates on each dataset the tasks it labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adperception.data.synth import generate_dataset
from tests.data import bdd100k_fixtures, fixtures
from tests.engine.test_training import run_tool

ROOT = Path(__file__).resolve().parents[2]
NO_NORMALS = tuple(k for k in fixtures.ALL_KINDS if k != "_normals.png")
KEYS = {
    "det": {"det/mAP", "det/mAP_50"},
    "seg": {"seg/mIoU", "seg/aAcc"},
    "depth": {"depth/abs_err", "depth/abs_rel", "depth/rmse", "depth/delta1"},
    "normals": {f"normals/{k}" for k in ("mean", "median", "within_11.25", "within_22.5")}
    | {"normals/within_30"},
    "drivable": {"drivable/mIoU", "drivable/aAcc"},
    "lanes": {"lanes/IoU", "lanes/accuracy", "lanes/aAcc"},
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mixed")
    generate_dataset(root / "synthdrive", {"train": 4, "val": 1}, seed=2, height=64, width=128)
    for split in ("train", "val"):
        fixtures.write_cityscapes_tree(root / "cityscapes", split=split, kinds=NO_NORMALS)
        bdd100k_fixtures.write_bdd100k_tree(root / "bdd100k", split=split)
    return {name: root / name for name in ("synthdrive", "cityscapes", "bdd100k")}


def test_a_mixed_run_trains_and_evaluates_per_dataset(trees: dict, tmp_path: Path) -> None:
    roots = [trees["bdd100k"], trees["synthdrive"], trees["cityscapes"]]
    overrides = [
        *(f"train_dataloader.dataset.datasets.{i}.data_root={r}" for i, r in enumerate(roots)),
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "val_dataloader.num_workers=0",
        "val_dataloader.persistent_workers=False",
        f"val_dataloader.dataset.data_root={trees['synthdrive']}",
        "model.backbone.pretrained=None",
        "model.heads.det.detector.num_queries=20",
        "model.heads.det.detector.dn_cfg.group_cfg.num_dn_queries=10",
        "train_cfg.max_iters=3",
        "train_cfg.val_interval=3",
        "default_hooks.checkpoint.interval=3",
    ]
    config = ROOT / "configs/experiments/mixed_datasets.py"
    work = tmp_path / "work"
    done = run_tool("tools/train.py", config, "--work-dir", work, "--cfg-options", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    provided = {
        ("SynthDrive", "synthdrive"): ("det", "seg", "depth", "normals", "drivable", "lanes"),
        ("CityscapesMTL", "cityscapes"): ("det", "seg", "depth"),
        ("BDD100KMTL", "bdd100k"): ("det", "seg", "drivable", "lanes"),
    }
    for (dataset_type, name), tasks in provided.items():
        out = tmp_path / f"{name}.json"
        done = run_tool(
            "tools/test.py",
            config,
            work / "iter_3.pth",
            "--out",
            out,
            "--cfg-options",
            *overrides,
            f"test_dataloader.dataset.type={dataset_type}",
            f"test_dataloader.dataset.data_root={trees[name]}",
            "test_dataloader.dataset.split=val",
            "test_dataloader.num_workers=0",
            "test_dataloader.persistent_workers=False",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        metrics = json.loads(out.read_text())
        assert set(metrics) == set().union(*(KEYS[t] for t in tasks)), name
