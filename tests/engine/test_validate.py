"""Start-up validation of configs against tiny dataset trees written by the data fixtures."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

import pytest
import torch.nn as nn
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry, init_default_scope

from adperception.data import formats
from adperception.engine import (
    ConfigError,
    load_config,
    validate_config,
    validate_model_tasks,
    validate_training,
)
from tests.data.fixtures import ALL_KINDS, write_cityscapes_tree, write_nyuv2_tree

#: A scope of its own, so that the fake backbone never shows up among the project's models.
TEST_MODELS = Registry("model", parent=MMENGINE_MODELS, scope="adperception_test_validate")


FAKE_BRANCHES = MappingProxyType(dict(semantic=("det", "seg")))


@TEST_MODELS.register_module()
class FakeBranchedBackbone(nn.Module):
    """Stands in for a backbone whose ``branches`` default the config leaves out."""

    def __init__(self, *, branches: Mapping = FAKE_BRANCHES) -> None:
        super().__init__()
        self.branches = branches


@TEST_MODELS.register_module()
class FakePlainBackbone(nn.Module):
    """A backbone without branches: every task reads the same features."""


HEADS = dict(
    det=dict(type="DetectionHead", num_classes=8),
    seg=dict(type="SegmentationHead", num_classes=19),
    depth=dict(type="DepthHead"),
    normals=dict(type="NormalsHead"),
)
BRANCHES = dict(semantic=["det", "seg"], geometric=["depth", "normals"])


def model_cfg(heads: dict = HEADS, branches: dict | None = BRANCHES) -> dict:
    backbone = dict(type="BranchedBackbone", shared_stages=2)
    if branches is not None:
        backbone["branches"] = branches
    return dict(type="MultiTaskModel", backbone=backbone, heads=heads)


def config(model: dict, dataset: dict, **loaders: dict) -> dict:
    return dict(model=model, train_dataloader=dict(batch_size=1, dataset=dataset), **loaders)


def cityscapes(root, kinds=ALL_KINDS, split="train") -> dict:
    write_cityscapes_tree(root, split=split, num=1, kinds=kinds)
    return dict(type="CityscapesMTL", data_root=str(root), split=split, pipeline=[])


def error_of(cfg: dict, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, **kwargs)
    return str(info.value)


def test_complete_config_passes(tmp_path) -> None:
    validate_config(config(model_cfg(), cityscapes(tmp_path)))


def test_datasets_resolve_in_the_project_scope(tmp_path) -> None:
    """Whatever scope is current (a Runner sets its own), dataset types are the project's."""
    init_default_scope("mmengine")
    message = error_of(
        config(model_cfg(heads={**HEADS, "seg": {"num_classes": 3}}), cityscapes(tmp_path))
    )
    assert "model.heads.seg.num_classes = 3" in message


def test_unknown_head_task_names_the_key() -> None:
    heads = {**HEADS, "semantic": dict(type="SegmentationHead", num_classes=19)}
    with pytest.raises(ConfigError, match=r"model\.heads\.semantic: unknown task 'semantic'"):
        validate_model_tasks(model_cfg(heads=heads))


def test_unknown_branch_task_names_the_branch() -> None:
    branches = dict(semantic=["det", "sem"], geometric=["depth", "normals"])
    with pytest.raises(ConfigError) as info:
        validate_model_tasks(model_cfg(branches=branches))
    message = str(info.value)
    assert "model.backbone.branches.semantic: unknown task 'sem'" in message
    assert "model.heads.seg: task 'seg' has no branch" in message


def test_head_without_branch() -> None:
    with pytest.raises(ConfigError, match=r"model\.heads\.normals: task 'normals' has no branch"):
        validate_model_tasks(model_cfg(branches=dict(semantic=["det", "seg"], geometric=["depth"])))


def test_default_branches_come_from_the_registered_backbone() -> None:
    model = model_cfg(branches=None)
    model["backbone"]["type"] = "adperception_test_validate.FakeBranchedBackbone"
    with pytest.raises(ConfigError) as info:
        validate_model_tasks(model)
    message = str(info.value)
    assert "model.heads.depth: task 'depth' has no branch in model.backbone.branches" in message
    assert "default of adperception_test_validate.FakeBranchedBackbone" in message
    model["heads"] = dict(det=HEADS["det"], seg=HEADS["seg"])
    validate_model_tasks(model)


def test_backbone_without_branches_is_not_checked() -> None:
    backbone = dict(type="adperception_test_validate.FakePlainBackbone")
    validate_model_tasks(dict(backbone=backbone, heads=HEADS))


@pytest.mark.parametrize(
    ("task", "key", "wrong", "right", "metainfo_key"),
    [
        ("det", "model.heads.det.num_classes", 10, 8, "det_classes"),
        ("seg", "model.heads.seg.num_classes", 20, 19, "classes"),
    ],
)
def test_class_count_mismatch_names_numbers_and_keys(
    tmp_path, task, key, wrong, right, metainfo_key
) -> None:
    heads = {**HEADS, task: {**HEADS[task], "num_classes": wrong}}
    message = error_of(config(model_cfg(heads=heads), cityscapes(tmp_path)))
    assert f"{key} = {wrong}" in message
    assert f"train_dataloader.dataset (CityscapesMTL) has {right} classes" in message
    assert f"metainfo['{metainfo_key}']" in message


def test_nested_class_count_is_checked(tmp_path) -> None:
    det = dict(type="DetectionHead", num_classes=8, detector=dict(bbox_head=dict(num_classes=7)))
    message = error_of(config(model_cfg(heads={**HEADS, "det": det}), cityscapes(tmp_path)))
    assert "model.heads.det.detector.bbox_head.num_classes = 7" in message
    assert "model.heads.det.num_classes" not in message


def test_nyuv2_seg_classes(tmp_path) -> None:
    write_nyuv2_tree(tmp_path)
    dataset = dict(type="NYUv2MTL", data_root=str(tmp_path), split="train", pipeline=[])
    heads = dict(seg=dict(type="SegmentationHead", num_classes=19), depth=HEADS["depth"])
    branches = dict(all=["seg", "depth"])
    message = error_of(config(model_cfg(heads=heads, branches=branches), dataset))
    assert "model.heads.seg.num_classes = 19" in message
    assert "(NYUv2MTL) has 13 classes" in message
    heads["seg"]["num_classes"] = 13
    validate_config(config(model_cfg(heads=heads, branches=branches), dataset))


def test_task_the_dataset_lacks_names_task_type_and_root(tmp_path) -> None:
    kinds = tuple(kind for kind in ALL_KINDS if kind != formats.NORMALS_SUFFIX)
    message = error_of(config(model_cfg(), cityscapes(tmp_path, kinds=kinds)))
    assert (
        f"model.heads.normals: train_dataloader.dataset (CityscapesMTL, data_root "
        f"'{tmp_path}') does not provide task 'normals' (it provides det, seg, depth)"
    ) in message


def test_every_problem_of_every_loader_is_reported(tmp_path) -> None:
    train_root, val_root = tmp_path / "train", tmp_path / "val"
    heads = {**HEADS, "det": {**HEADS["det"], "num_classes": 3}}
    no_depth = tuple(k for k in ALL_KINDS if k not in (formats.DISPARITY_SUFFIX,))
    val = dict(dataset=dict(type="RepeatDataset", times=2, dataset=cityscapes(val_root, no_depth)))
    cfg = config(model_cfg(heads=heads), cityscapes(train_root), val_dataloader=val)
    message = error_of(cfg, dataloaders=("train_dataloader", "val_dataloader"))
    lines = message.splitlines()
    assert "model.heads.det.num_classes = 3 but train_dataloader.dataset " in lines[0]
    assert lines[1].startswith("model.heads.depth: val_dataloader.dataset.dataset (CityscapesMTL")
    assert "model.heads.det.num_classes = 3 but val_dataloader.dataset.dataset " in lines[2]
    assert len(lines) == 3
    validate_config(cfg, dataloaders=("test_dataloader",))


def test_config_without_heads_needs_no_dataset() -> None:
    dataset = dict(type="CityscapesMTL", data_root="/nonexistent", split="train")
    validate_config(dict(model=dict(type="SomeModel"), train_dataloader=dict(dataset=dataset)))


def test_unknown_balancer_names_the_key_and_the_choices() -> None:
    model = {**model_cfg(), "balancer": dict(type="PCGradd", weighting=dict(type="Uncertainty"))}
    lines = error_of(dict(model=model)).splitlines()
    assert lines[0].startswith("model.balancer.type: unknown balancer 'PCGradd' (registered: ")
    assert "PCGrad, " in lines[0] and "UncertaintyWeighting" in lines[0]
    assert lines[1].startswith("model.balancer.weighting.type: unknown balancer 'Uncertainty'")
    model["balancer"] = dict(type="adperception.PCGrad", weighting=dict(type="DWA"))
    validate_config(dict(model=model))


def test_balancer_without_type() -> None:
    model = {**model_cfg(), "balancer": dict(interval=25)}
    assert error_of(dict(model=model)).startswith("model.balancer.type: missing (registered")


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            dict(optim_wrapper=dict(optimizer=dict(type="SGD", lr=-0.1))),
            "optim_wrapper.optimizer.lr = -0.1: a learning rate must be a number >= 0",
        ),
        (
            dict(optim_wrapper=dict(optimizer=dict(type="SGD", lr="1e-3"))),
            "optim_wrapper.optimizer.lr = '1e-3': a learning rate must be a number >= 0",
        ),
        (
            dict(train_cfg=dict(by_epoch=False, max_iters=0)),
            "train_cfg.max_iters = 0: must be a positive integer",
        ),
        (dict(train_cfg=dict(max_epochs=2.5)), "train_cfg.max_epochs = 2.5: must be a positive"),
    ],
)
def test_training_values_that_cannot_train(cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        validate_training(cfg)


def test_training_values_that_train() -> None:
    validate_training(
        dict(
            optim_wrapper=dict(optimizer=dict(type="SGD", lr=0), paramwise_cfg=dict(lr_mult=2)),
            train_cfg=dict(by_epoch=False, max_iters=1),
        )
    )


def test_config_syntax_error_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("model = dict(\n    type = = 'x',\n)\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}, line 2: syntax error: "):
        load_config(path)
    child = tmp_path / "child.py"
    child.write_text(f"_base_ = [{str(path)!r}]\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}.*line 2"):
        load_config(child)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path))}/none.py: no such config"):
        load_config(tmp_path / "none.py")


def test_missing_base_config_is_named(tmp_path) -> None:
    child = tmp_path / "child.py"
    child.write_text("_base_ = ['missing_base.py']\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(child))}: .*missing_base\.py"):
        load_config(child)
