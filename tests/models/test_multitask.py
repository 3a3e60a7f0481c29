"""The multi-task model: losses and predictions per task, and which tasks own which weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.optim import build_optim_wrapper

from adperception.engine import setup_runtime
from adperception.engine.optim_wrapper import NonFiniteLossError
from adperception.registry import MODELS
from tests.models.batches_for_tests import synthdrive_batch

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("det", "seg", "depth", "normals")


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return synthdrive_batch(tmp_path_factory.mktemp("synth"), seed=11)


def build(config: str) -> torch.nn.Module:
    setup_runtime()
    model = MODELS.build(Config.fromfile(ROOT / config).model)
    model.init_weights()
    return model


def test_losses_predictions_and_raw_outputs(batch: dict) -> None:
    torch.manual_seed(0)
    model = build("configs/quickstart.py")
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode="loss")
    assert {f"loss_{t}" for t in TASKS} <= set(losses)
    assert all(torch.isfinite(losses[f"loss_{t}"]) for t in TASKS)
    # the detached terms of a multi-term head sum to its task loss
    det_terms = [v for k, v in losses.items() if k.startswith("det.")]
    torch.testing.assert_close(sum(det_terms), losses["loss_det"].detach())
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        samples = model(**data, mode="predict")
        raw = model(data["inputs"], mode="tensor")
    for sample in samples:
        h, w = sample.img_shape
        assert sample.pred_sem_seg.data.shape == (1, h, w)
        assert sample.pred_depth.data.shape == (1, h, w) and (sample.pred_depth.data > 0).all()
        norms = sample.pred_normals.data.norm(dim=0)
        torch.testing.assert_close(norms, torch.ones_like(norms))
        boxes = sample.pred_instances.bboxes
        assert ((boxes[:, 0::2] >= 0) & (boxes[:, 0::2] <= w)).all()
    assert set(raw) == set(TASKS) and raw["seg"].shape[1] == 19


def test_parameter_tasks_agree_with_autograd_on_the_default_config(batch: dict) -> None:
    """Every weight a task's loss reaches is one the model says that task depends on, and every
    weight the model assigns to a task is in that task's graph (configs/ad_mtl.py, Swin-T)."""
    torch.manual_seed(0)
    cfg = Config.fromfile(ROOT / "configs/ad_mtl.py").model
    cfg.heads.det.detector.num_queries = 50  # the 64×128 batch has 168 positions at strides 8-32
    model = MODELS.build(cfg)
    model.init_weights()
    owners = model.parameter_tasks()
    params = dict(model.named_parameters())
    assert owners.keys() == params.keys()
    losses = model(**model.data_preprocessor(batch, True), mode="loss")
    shared = [n for n, t in owners.items() if t == frozenset(TASKS)]
    assert shared and all(n.startswith("backbone.trunk") for n in shared)
    # Default branches: semantic = det + seg, geometric = depth + normals; DINO reads the
    # stride-8 to 32 FPN outputs, so the stride-4 level serves segmentation alone.
    for level in (1, 2, 3):
        assert owners[f"necks.semantic.fpn_convs.{level}.conv.weight"] == {"det", "seg"}
    assert owners["necks.semantic.fpn_convs.0.conv.weight"] == {"seg"}
    assert owners["necks.geometric.fpn_convs.0.conv.weight"] == {"depth", "normals"}
    assert {t for n, t in owners.items() if n.startswith("backbone.branches.semantic")} == {
        frozenset({"det", "seg"})
    }
    for task in TASKS:
        grads = torch.autograd.grad(
            losses[f"loss_{task}"], list(params.values()), retain_graph=True, allow_unused=True
        )
        reached = {n for n, g in zip(params, grads, strict=True) if g is not None}
        claimed = {n for n, t in owners.items() if task in t}
        assert reached == claimed, (task, sorted(reached ^ claimed)[:5])


def test_unknown_or_mismatched_tasks_fail_at_construction() -> None:
    setup_runtime()
    cfg = Config.fromfile(ROOT / "configs/quickstart.py").model
    cfg.heads["flow"] = cfg.heads["depth"]
    with pytest.raises(ValueError, match="unknown task.*flow"):
        MODELS.build(cfg)
    cfg = Config.fromfile(ROOT / "configs/quickstart.py").model
    cfg.backbone.branches = dict(semantic=["det", "seg"], geometric=["depth"])
    with pytest.raises(ValueError, match="normals"):
        MODELS.build(cfg)
    cfg = Config.fromfile(ROOT / "configs/quickstart.py").model
    cfg.group_necks = dict(semantics=dict(num_outs=3))
    with pytest.raises(ValueError, match=r"group_necks: \['semantics'\] are not groups"):
        MODELS.build(cfg)


def test_a_group_neck_override_changes_that_groups_neck_only() -> None:
    setup_runtime()
    cfg = Config.fromfile(ROOT / "configs/quickstart.py").model
    cfg.group_necks = dict(geometric=dict(upsample_cfg=dict(mode="bilinear")))
    model = MODELS.build(cfg)
    assert model.necks["geometric"].upsample_cfg == dict(mode="bilinear")
    assert model.necks["semantic"].upsample_cfg == dict(mode="nearest")


def test_a_non_finite_task_loss_skips_the_step_and_repeated_ones_stop_training(
    batch: dict,
) -> None:
    torch.manual_seed(0)
    model = build("configs/quickstart.py")
    wrapper = build_optim_wrapper(
        model,
        dict(
            type="MTLOptimWrapper", optimizer=dict(type="SGD", lr=0.1), max_consecutive_nonfinite=2
        ),
    )
    depth_loss = model.heads["depth"].loss
    model.heads["depth"].loss = lambda *a: {"loss_depth": depth_loss(*a)["loss_depth"] * torch.nan}
    hub = MessageHub.get_current_instance()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log = model.train_step(batch, wrapper)
    assert "loss_depth" not in log and log["nonfinite.depth"] == 1
    assert hub.get_info("nonfinite/depth") >= 1
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    with pytest.raises(NonFiniteLossError, match="2 consecutive"):
        model.train_step(batch, wrapper)
    model.heads["depth"].loss = depth_loss
    model.train_step(batch, wrapper)  # a finite step updates the weights again
    assert not all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_a_diverged_detector_skips_the_step_instead_of_ending_the_run(batch: dict) -> None:
    """NaN features reach DINO's Hungarian matching before any loss exists: the step is
    skipped like any non-finite loss's, where mmdet's assigner raised in scipy."""
    torch.manual_seed(0)
    model = build("configs/quickstart.py")
    wrapper = build_optim_wrapper(
        model, dict(type="MTLOptimWrapper", optimizer=dict(type="SGD", lr=0.1))
    )
    det_loss = model.heads["det"].loss
    model.heads["det"].loss = lambda feats, samples: det_loss(
        [feat * torch.nan for feat in feats], samples
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log = model.train_step(batch, wrapper)
    assert "loss_det" not in log and log["nonfinite.det"] == 1
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_a_head_without_a_type_is_its_tasks_default() -> None:
    """A config names a task and what it changes; the rest is the task's default head."""
    setup_runtime()
    cfg = Config.fromfile(ROOT / "configs/quickstart.py").model
    cfg.backbone.pretrained = None
    cfg.backbone.branches = dict(semantic=["det", "seg", "lanes"], geometric=["depth", "normals"])
    cfg.heads.lanes = dict(channels=32)
    model = MODELS.build(cfg)
    lanes = model.heads["lanes"]
    assert lanes.task == "lanes" and lanes.binary and lanes.decode_head.channels == 32
    assert lanes.decode_head.num_classes == 2 and len(lanes.decode_head.loss_decode) == 2
    cfg.heads.det.pop("type")
    with pytest.raises(ValueError, match="'det' has no default head"):
        MODELS.build(cfg)
