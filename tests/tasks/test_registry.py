"""Every registered task, tested the day it is registered: its declarations hold up under the
transforms, packing, metrics, export names and pictures (docs/design.md §3)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.runner import set_random_seed
from mmengine.structures import InstanceData, PixelData

from adperception.data.drawing import Style, absent
from adperception.data.structures import MTLDataSample
from adperception.data.visualize import draw_sample
from adperception.export.wrapper import output_names, output_specs
from adperception.registry import TRANSFORMS
from adperception.tasks import MapTask, get_task, task_names
from adperception.tasks.label_map import IGNORE_INDEX, LabelMapTask

H, W = 32, 48
TASKS = task_names()


def target(name: str, rng: np.random.Generator) -> dict:
    """A valid raw target of task ``name`` on an H×W image, by the kind of target it declares."""
    task = get_task(name)
    if isinstance(task, LabelMapTask):
        ids = rng.integers(0, 3, (H, W)).astype(np.int64)
        ids[:2] = IGNORE_INDEX
        return {task.map_key: ids}
    if isinstance(task, MapTask) and task.channels == 1:
        depth = rng.uniform(1.0, 80.0, (H, W)).astype(np.float32)
        depth[:2] = 0.0
        return {task.map_key: depth}
    if isinstance(task, MapTask) and task.channels == 3:
        normals = rng.normal(size=(H, W, 3))
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
        normals[:2] = 0.0
        return {task.map_key: normals.astype(np.float32)}
    if task.raw_keys == ("gt_bboxes", "gt_bboxes_labels"):
        return {
            "gt_bboxes": np.array([[4, 6, 20, 30], [24, 2, 48, 14]], np.float32),
            "gt_bboxes_labels": np.array([0, 1], np.int64),
        }
    raise AssertionError(f"tests/tasks: add an example target for the new task '{name}'")


def sample(*names: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    raw = {
        "img": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        "img_path": "x.png",
        "sample_idx": 0,
        "ori_shape": (H, W),
        "img_shape": (H, W),
    }
    for name in names:
        raw.update(target(name, rng))
    return raw


def assert_targets_equal(a: dict, b: dict, name: str) -> None:
    for key in get_task(name).raw_keys:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-5, err_msg=key)


def test_registry_lists_the_tasks_in_order() -> None:
    assert TASKS[:4] == ("det", "seg", "depth", "normals")
    with pytest.raises(KeyError, match="unknown task 'flow'; registered tasks are det, seg"):
        get_task("flow")


@pytest.mark.parametrize("name", TASKS)
def test_flip_twice_is_the_identity(name: str) -> None:
    raw = sample(name)
    flip = TRANSFORMS.build(dict(type="RandomFlip", prob=1.0, _scope_="adperception"))
    once = flip(copy.deepcopy(raw))
    assert not all(np.array_equal(once[k], raw[k]) for k in get_task(name).raw_keys[:1])
    assert_targets_equal(flip(once), raw, name)


@pytest.mark.parametrize("name", TASKS)
def test_zoom_in_then_out_is_the_identity(name: str) -> None:
    """Nearest-neighbour maps, boxes and each task's zoom physics (depth / s, then / (1 / s))
    all undo exactly for s = 2, so whatever a task does to its target under a zoom it undoes."""
    raw = sample(name)
    resize = TRANSFORMS.build(dict(type="RandomResize", scale=(W, H), ratio_range=(2.0, 2.0)))
    shrink = TRANSFORMS.build(dict(type="Resize", scale=(W, H)))  # fits 2H×2W back into H×W
    set_random_seed(0)
    big = resize(copy.deepcopy(raw))
    assert big["img"].shape[:2] == (2 * H, 2 * W)
    small = shrink(big)
    small.pop(f"ori_{get_task(name).raw_keys[0]}", None)  # the test Resize keeps the 2× target
    assert_targets_equal(small, raw, name)


@pytest.mark.parametrize("name", TASKS)
def test_pack_batch_unpack_round_trip(name: str) -> None:
    raw = sample(name)
    packed = TRANSFORMS.build(dict(type="PackMTLInputs", _scope_="adperception"))(
        copy.deepcopy(raw)
    )
    batch = pseudo_collate([packed, packed])
    task = get_task(name)
    for data_sample in batch["data_samples"]:
        assert isinstance(data_sample, MTLDataSample)
        element = data_sample.get(task.gt_field)
        assert isinstance(element, task.element_type)
        assert_targets_equal(task.unpack(element), raw, name)
        assert [t for t in TASKS if get_task(t).gt_field in data_sample] == [name]


@pytest.mark.parametrize("name", TASKS)
def test_fields_take_only_their_element_type(name: str) -> None:
    task = get_task(name)
    wrong = PixelData() if task.element_type is InstanceData else InstanceData()
    for field in (task.gt_field, task.pred_field):
        with pytest.raises(AssertionError):
            setattr(MTLDataSample(), field, wrong)


@pytest.mark.parametrize("name", TASKS)
def test_a_perfect_prediction_scores_best(name: str) -> None:
    """The target as its own prediction: every primary metric at its best possible value."""
    task = get_task(name)
    packed = TRANSFORMS.build(dict(type="PackMTLInputs", _scope_="adperception"))(sample(name))
    data_sample = packed["data_samples"]
    gt = data_sample.get(task.gt_field)
    if task.element_type is InstanceData:
        pred = InstanceData(bboxes=gt.bboxes, labels=gt.labels, scores=torch.ones(len(gt)))
    else:
        pred = PixelData(data=gt.data.clone())
    setattr(data_sample, task.pred_field, pred)
    plain = data_sample.to_dict()
    options = {k.removeprefix(f"{name}_"): v for k, v in task.metric_options.items()}
    if task.class_key is not None:
        options["classes"] = ("a", "b", "c")
    record = task.measure(plain[task.pred_field], plain[task.gt_field], plain, options)
    metrics = task.summarize([record], options)
    best = {+1: 100.0, -1: 0.0}
    for key, sign in task.primary_metrics.items():
        assert key.startswith(f"{name}/")
        assert metrics[key.split("/", 1)[1]] == pytest.approx(best[sign], abs=1e-4), key


def test_output_names_are_unique_and_per_task() -> None:
    names = output_names(TASKS)
    assert len(names) == len(set(names))
    for name in TASKS:
        assert output_names([name]) == list(get_task(name).outputs)
        assert set(output_specs([name])) <= set(output_specs(TASKS))


@pytest.mark.parametrize("name", TASKS)
def test_every_task_is_drawn(name: str) -> None:
    """Its tile shows its target (it differs from the "no <task>" tile), and a sample without
    the target gets exactly that tile."""
    raw = sample(name)
    metainfo = {"classes": ("a", "b", "c"), "palette": ((255, 0, 0), (0, 255, 0), (0, 0, 255))}
    task = get_task(name)
    style = Style((H, W))
    panel = draw_sample(raw, metainfo=metainfo, tasks=[name])
    assert panel.shape == (H, 2 * W, 3) and panel.dtype == np.uint8
    missing = absent(raw["img"], "x", style)
    drawn = task.draw(raw["img"], raw, metainfo, style)
    np.testing.assert_array_equal(panel[:, :W], drawn)
    assert not np.array_equal(drawn[H // 2 :], missing[H // 2 :])
    empty = task.draw(raw["img"], {"img": raw["img"]}, metainfo, style)
    np.testing.assert_array_equal(empty[H // 2 :], raw["img"][H // 2 :])
