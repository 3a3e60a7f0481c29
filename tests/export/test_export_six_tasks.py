"""The six-task model (configs/quickstart_six_tasks.py) exported, as a task registered today
would be: its ONNX outputs named by its tasks, its results at the original size equal to
``predict``'s, in PyTorch and onnxruntime alike, and drawn one tile per task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from adperception.data.datasets import SynthDrive
from adperception.data.synth import generate_dataset
from adperception.engine import setup_runtime
from adperception.export import OnnxModel, draw_result, inference, init_model, output_names
from adperception.registry import MODELS
from tests.export.test_export import SIZE, predict, run_tool

ROOT = Path(__file__).resolve().parents[2]
SIX = ["det", "seg", "depth", "normals", "drivable", "lanes"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    setup_runtime()
    root = tmp_path_factory.mktemp("six")
    generate_dataset(root / "data", {"val": 1}, seed=6, height=SIZE[0], width=SIZE[1])
    config = root / "six.py"
    config.write_text(f"""
_base_ = [{str(ROOT / "configs/quickstart_six_tasks.py")!r}]
test_pipeline = [dict(type="Resize", scale=({SIZE[1]}, {SIZE[0]})), dict(type="PackMTLInputs")]
val_dataloader = dict(dataset=dict(data_root={str(root / "data")!r}, pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(backbone=dict(pretrained=None), heads=dict(det=dict(detector=dict(num_queries=20))))
""")
    cfg = Config.fromfile(config)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    checkpoint = root / "iter_0.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"iter": 0}}, checkpoint)
    out = root / "exported"
    proc = run_tool("tools/export.py", config, checkpoint, "--format", "onnx", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = SynthDrive(data_root=str(root / "data"), split="val", pipeline=[]).get_raw_sample(0)
    return dict(out=out, model=model, image=image["img"], pipeline=cfg.test_dataloader.dataset)


def test_outputs_are_named_by_the_tasks_and_onnx_keeps_them(exported: dict) -> None:
    torch_model, session = init_model(exported["out"]), OnnxModel(exported["out"])
    names = output_names(SIX)
    assert names[-2:] == ["drivable_logits", "lanes_logits"]
    assert torch_model.output_names == session.output_names == names
    assert list(torch_model.meta["outputs"]) == names
    assert torch_model.meta["metainfo"]["classes"] == list(SynthDrive.METAINFO["classes"])


def test_new_tasks_results_equal_predict_in_torch_and_onnx(exported: dict) -> None:
    image = exported["image"]
    [sample] = predict(exported["model"], [image], exported["pipeline"].pipeline)
    by_torch = inference(init_model(exported["out"]), image)
    by_onnx = inference(OnnxModel(exported["out"]), image)
    for name, field in (("drivable", "pred_drivable"), ("lanes", "pred_lanes")):
        expected = getattr(sample, field).data[0].numpy()
        assert by_torch[name].shape == image.shape[:2] == expected.shape
        assert (by_torch[name] == expected).mean() > 0.999, name
        assert (by_onnx[name] == by_torch[name]).mean() > 0.999, name
    assert set(np.unique(by_torch["lanes"])) <= {0, 1}  # a lane / no-lane head
    panel = draw_result(image, by_torch, init_model(exported["out"]).meta)
    assert panel.shape == (3 * SIZE[0], 2 * SIZE[1], 3)  # six tiles, two per row
