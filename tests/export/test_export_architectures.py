"""The architectures of configs/experiments/architectures with modules of their own export: the
safetensors directory loads into a model whose outputs equal the trained model's, and
onnxruntime runs the ONNX graph to the same outputs. (Hard sharing is the quickstart's backbone
with every stage shared, sluice the cross-stitch unit with chunked channels: the same ops.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from adperception.engine import setup_runtime
from adperception.export import OnnxModel, add_onnx, export_checkpoint, init_model
from adperception.registry import MODELS

ROOT = Path(__file__).resolve().parents[2]
SIZE = (64, 128)  # (h, w): the test scale, so the ONNX input is one 64×128 image
ARCHITECTURES = ("cross_stitch", "mtan", "hyper_adapters", "task_norms", "multi_decoder")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_exports_to_safetensors_and_onnx(
    architecture: str, tmp_path: Path
) -> None:
    setup_runtime()
    config = tmp_path / "tiny.py"
    config.write_text(f"""
_base_ = [{str(ROOT / f"configs/experiments/architectures/{architecture}.py")!r}]
test_pipeline = [dict(type="Resize", scale=({SIZE[1]}, {SIZE[0]})), dict(type="PackMTLInputs")]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
""")
    cfg = Config.fromfile(config)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():  # adapters and attention away from their identity start
        for name, param in model.named_parameters():
            if "hypernetwork.up" in name or "stitches" in name:
                param.add_(0.01 * torch.randn_like(param))
    checkpoint = tmp_path / "iter_1.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"iter": 1}}, checkpoint)
    out = export_checkpoint(cfg, checkpoint, tmp_path / "exported")
    add_onnx(out)
    exported, session = init_model(out), OnnxModel(out)
    assert session.input_shape == SIZE
    batch = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    img_shapes = torch.tensor([SIZE, (48, 96)])
    with torch.no_grad():
        expected = exported(batch, img_shapes)
    actual = session(batch, img_shapes)
    assert (
        set(actual)
        == set(expected)
        == {"det_logits", "det_boxes", "seg_logits", "depth", "normals"}
    )
    for name, value in expected.items():
        relative = (actual[name] - value).abs().max() / value.abs().max()
        assert relative < 1e-4, f"{name}: max relative error {relative:.2e}"
    # the exported weights are the model's: its own forward gives the same outputs
    model.eval()
    with torch.no_grad():
        raw = model(batch[:1], mode="tensor")
        alone = exported(batch[:1], torch.tensor([SIZE]))
    torch.testing.assert_close(alone["seg_logits"], raw["seg"], rtol=1e-4, atol=1e-5)
