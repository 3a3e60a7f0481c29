"""Training when samples lack some tasks' labels: a task without labels in a batch contributes
exactly nothing, and a head's loss on a partly labelled batch is its loss on the labelled part."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from adperception.engine import setup_runtime
from adperception.registry import MODELS
from adperception.tasks import get_task
from tests.models.batches_for_tests import synthdrive_batch

ROOT = Path(__file__).resolve().parents[2]
SIX = ("det", "seg", "depth", "normals", "drivable", "lanes")


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return synthdrive_batch(tmp_path_factory.mktemp("synth"), seed=5)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    setup_runtime()
    cfg = Config.fromfile(ROOT / "configs/quickstart_six_tasks.py").model
    cfg.backbone.pretrained = None
    detector = cfg.heads.det.detector
    detector.num_queries = 20
    detector.dn_cfg.group_cfg.num_dn_queries = 10
    torch.manual_seed(0)
    built = MODELS.build(cfg)
    built.init_weights()
    return built


def without(batch: dict, task: str, samples: tuple[int, ...]) -> dict:
    """``batch`` with ``task``'s target removed from the ``samples`` given."""
    out = {"inputs": list(batch["inputs"]), "data_samples": copy.deepcopy(batch["data_samples"])}
    for i in samples:
        delattr(out["data_samples"][i], get_task(task).gt_field)
    return out


@pytest.mark.parametrize("task", ["drivable", "det"])
def test_a_task_without_labels_in_the_batch_gets_nothing(model, batch: dict, task: str) -> None:
    """No loss, no logged loss or weight, no gradient: its own parameters stay exactly as they
    were, while the labelled tasks' parameters move; the step measures no gradients, so no
    conflict is counted."""
    model = copy.deepcopy(model)
    wrapper = build_optim_wrapper(
        model, dict(type="MTLOptimWrapper", optimizer=dict(type="AdamW", lr=1e-3))
    )
    unlabelled = without(batch, task, (0, 1))
    losses = model.loss(*_preprocessed(model, unlabelled))
    assert f"loss_{task}" not in losses and {f"loss_{t}" for t in SIX if t != task} <= set(losses)
    head = {n: p.detach().clone() for n, p in model.heads[task].named_parameters()}
    others = {n: p.detach().clone() for n, p in model.heads["seg"].named_parameters()}
    log = model.train_step(unlabelled, wrapper)
    assert not any(key.endswith(task) or key.startswith(f"{task}.") for key in log), log
    assert model.balancer.stats is None
    for name, param in model.heads[task].named_parameters():
        assert torch.equal(param, head[name]) and param.grad is None, name
    assert any(not torch.equal(p, others[n]) for n, p in model.heads["seg"].named_parameters())


def test_no_labelled_task_at_all_steps_without_change(model, batch: dict) -> None:
    model = copy.deepcopy(model)
    wrapper = build_optim_wrapper(
        model, dict(type="MTLOptimWrapper", optimizer=dict(type="AdamW", lr=1e-3))
    )
    empty = batch
    for task in SIX:
        empty = without(empty, task, (0, 1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert model.train_step(empty, wrapper) == {}
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize("task", SIX)
def test_masking_a_sample_equals_training_on_the_labelled_one(model, batch: dict, task: str):
    """The head's loss on [labelled A, unlabelled B] equals its loss on [A] alone, both from the
    same features: the unlabelled sample neither adds terms nor dilutes the average."""
    model = copy.deepcopy(model).train()
    inputs, samples = _preprocessed(model, without(batch, task, (1,)))
    with torch.no_grad():
        feats = model.extract_feat(inputs)[model.task_groups[task]]
    head = model.heads[task]
    torch.manual_seed(1)
    both = head.loss(feats, samples)
    torch.manual_seed(1)
    alone = head.loss([f[:1] for f in feats], samples[:1])
    assert both.keys() == alone.keys()
    for key in both:
        torch.testing.assert_close(both[key], alone[key], rtol=1e-5, atol=1e-6, msg=key)


def _preprocessed(model, batch: dict) -> tuple[torch.Tensor, list]:
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    return data["inputs"], data["data_samples"]
