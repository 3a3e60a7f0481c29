"""What only a CUDA device can check: mmcv's compiled deformable attention, the batched per-task
backward under bf16 autocast, and a bf16 training step of the full model. Marked ``gpu`` and
skipped without CUDA; ``tools/gpu_check.sh`` runs them (``pytest -m gpu``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adperception.engine.optim_wrapper import MTLAmpOptimWrapper
from tests.balancing.models_for_tests import BranchedRegressor, batch
from tests.balancing.test_balancer import step_and_diff

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_compiled_deformable_attention_equals_its_pytorch_definition() -> None:
    """mmcv's CUDA kernel against its own reference formula (bilinear sampling by grid_sample)."""
    from mmcv.ops.multi_scale_deform_attn import (
        MultiScaleDeformableAttnFunction,
        multi_scale_deformable_attn_pytorch,
    )

    generator = torch.Generator(device="cuda").manual_seed(0)
    shapes = torch.tensor([[16, 32], [8, 16], [4, 8]], device="cuda")
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    batch_size, heads, dims, queries, points = 2, 8, 32, 50, 4
    value = torch.randn(
        batch_size, int(shapes.prod(1).sum()), heads, dims, device="cuda", generator=generator
    )
    locations = torch.rand(
        batch_size, queries, heads, len(shapes), points, 2, device="cuda", generator=generator
    )
    weights = torch.rand(
        batch_size, queries, heads, len(shapes), points, device="cuda", generator=generator
    )
    weights = weights / weights.sum((-1, -2), keepdim=True)
    compiled = MultiScaleDeformableAttnFunction.apply(value, shapes, starts, locations, weights, 64)
    reference = multi_scale_deformable_attn_pytorch(value, shapes, locations, weights)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_batched_and_sequential_task_gradients_agree_under_cuda_autocast(dtype: str) -> None:
    """Issue 13's bar for the batched backward: the same update to 1e-6 relative, AMP included."""
    updates = []
    for batched in (False, True):
        torch.manual_seed(0)
        model = BranchedRegressor(dict(type="PCGrad", batched_backward=batched)).cuda()
        optim_wrapper = MTLAmpOptimWrapper(
            optimizer=torch.optim.SGD(model.parameters(), lr=1.0), loss_scale=2.0**10, dtype=dtype
        )
        # the model's data preprocessor moves the batch to the GPU
        updates.append(step_and_diff(model, optim_wrapper, batch(8)))
    for name, value in updates[0].items():
        torch.testing.assert_close(updates[1][name], value, rtol=1e-6, atol=1e-9, msg=name)


def test_the_full_model_trains_a_bf16_step_without_skipping(tmp_path: Path) -> None:
    """configs/ad_mtl.py (Swin-T, DINO with mmcv's CUDA attention, four heads) under bf16
    autocast: finite losses, an applied step, parameters moved."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    from adperception.engine import setup_runtime
    from adperception.engine.runner import enable_amp
    from adperception.registry import MODELS
    from tests.models.batches_for_tests import synthdrive_batch

    setup_runtime()
    cfg = Config.fromfile(Path(__file__).resolve().parents[1] / "configs/ad_mtl.py")
    assert enable_amp(cfg)
    cfg.optim_wrapper.dtype = "bfloat16"
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.cuda().train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    log_vars = model.train_step(synthdrive_batch(tmp_path, seed=0), optim_wrapper)
    assert all(torch.isfinite(v).all() for k, v in log_vars.items() if k.startswith("loss"))
    assert optim_wrapper.skipped_steps == 0
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
