"""Every config in configs/ builds its model and optim wrapper, trains one step and predicts, at
a tiny size: fewer layers and queries set through the config as a user would with
``--cfg-options``, the architecture (backbone family, decoder type, balancer, heads) untouched.
Sweep configs (``tools/run_delta_m.py``'s, which name a ``joint`` config) build every run's
balancer instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from adperception.balancing import build_balancer
from adperception.data.datasets import SynthDrive
from adperception.data.synth import generate_dataset
from adperception.engine import setup_runtime
from adperception.engine.delta_m import Sweep
from adperception.registry import DATASETS, MODELS

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py") if "_base_" not in p.parts
)
SWEEPS = [f for f in FILES if "joint" in Config.fromfile(ROOT / f)]
CONFIGS = [f for f in FILES if f not in SWEEPS]
# Tiny variants of each backbone family: one block per stage, narrow stages.
TINY_BACKBONES = {
    "swin": dict(depths=(1, 1, 1, 1), embed_dim=48),
    "convnext": dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)),
    "tf_efficientnet_lite": {},  # Lite0 as it is (3.0 M): timm's Lite factories fix width and depth
}


def tiny(cfg: Config) -> None:
    """Overrides a user would pass as ``--cfg-options`` for a smoke run."""
    backbone = cfg.model.get("backbone")
    if backbone is not None:
        family = next(f for f in TINY_BACKBONES if backbone.model_name.startswith(f))
        backbone.model_kwargs = TINY_BACKBONES[family]
        backbone.pretrained = None
    detector = cfg.model.get("heads", {}).get("det", {}).get("detector")
    if detector is not None:
        detector.num_queries = 20
        if "test_cfg" in detector:  # plain DETR keeps the top max_per_img of its queries
            detector.test_cfg.max_per_img = min(detector.test_cfg.get("max_per_img", 20), 20)
        # two decoder layers: DAB-DETR's query scaling only runs from the second one on
        for part, layers in (("encoder", 1), ("decoder", 2)):
            if detector.get(part) is not None:  # MemoryDINO has no encoder
                detector[part].num_layers = layers
        if "dn_cfg" in detector:
            detector.dn_cfg.group_cfg.num_dn_queries = 10


@pytest.fixture(scope="module")
def synth_batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    setup_runtime()
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, {"val": 2}, seed=3, height=64, width=128)
    dataset = SynthDrive(data_root=str(root), split="val", pipeline=[dict(type="PackMTLInputs")])
    return pseudo_collate([dataset[0], dataset[1]])


def config_batch(cfg: Config, synth_batch: dict) -> dict:
    """SynthDrive frames for the image models (every task's target); the config's own data for
    a model of another kind (the digits)."""
    if cfg.model.type == "MultiTaskModel":
        classes = cfg.model.heads.get("seg", {}).get("num_classes", 19)
        for sample in synth_batch["data_samples"]:  # NYUv2's 13 classes: the rest ignored
            labels = sample.gt_sem_seg.data
            labels[(labels >= classes) & (labels != 255)] = 255
        return synth_batch
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    return torch.utils.data.default_collate([dataset[i] for i in range(4)])


def test_every_config_is_covered() -> None:
    assert (
        "configs/quickstart.py" in CONFIGS and "configs/experiments/ad_mtl_dab_detr.py" in CONFIGS
    )
    assert "configs/experiments/delta_m_synthdrive.py" in SWEEPS
    assert len(CONFIGS) >= 16


@pytest.mark.parametrize("config", SWEEPS)
def test_sweep_config_builds_every_runs_balancer(config: str) -> None:
    setup_runtime()
    sweep = Sweep.from_config(Config.fromfile(ROOT / config))
    for task in sweep.tasks:
        single = sweep.single_task_config(task)
        assert set(single.model.heads) == {task}
        build_balancer(single.model.balancer, (task,))
    for method in sweep.joint_runs:
        build_balancer(sweep.joint_config(method).model.balancer, sweep.tasks)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_one_step_and_predicts(config: str, synth_batch: dict) -> None:
    setup_runtime()
    torch.manual_seed(0)
    cfg = Config.fromfile(ROOT / config)
    tiny(cfg)
    with DefaultScope.overwrite_default_scope("adperception"):
        model = MODELS.build(cfg.model)
        model.init_weights()
        model.train()
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    batch = config_batch(cfg, synth_batch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log_vars = model.train_step(batch, optim_wrapper)
    for task in model.tasks:
        assert torch.isfinite(log_vars[f"loss_{task}"]), (config, task)
    layout = model.balancer.layout(model)
    for task in model.tasks:  # every task trains, and every traced parameter of it moved
        params = layout.task_params(task)
        assert params, (config, task)
    names = {id(p): n for n, p in model.named_parameters()}
    unowned = [n for n, tasks in model.parameter_tasks().items() if not tasks]
    assert not [n for n in unowned if not n.startswith("balancer.")], unowned
    moved = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert moved and all(names[id(p)] in moved for g in layout.groups for p in g.params[:1])
    model.eval()
    with torch.no_grad():
        if cfg.model.type == "MultiTaskModel":
            data = model.data_preprocessor(batch, False)
            samples = model(**data, mode="predict")
            assert len(samples) == len(batch["inputs"])
        else:
            outputs = model.val_step(batch)
            assert len(outputs) == len(batch["inputs"])
