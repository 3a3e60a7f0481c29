"""DigitsMTLNet at MNIST's 28×28 (``image_size=28, stem_stride=2``) next to the 8×8 default:
the trunk's size follows the image, the probe batch is of the image's size, and a few training
steps on real MNIST lower both losses."""

from __future__ import annotations

import pytest
import torch
from mmengine.dataset import default_collate

from adperception.engine.optim_wrapper import MTLOptimWrapper
from adperception.registry import DATASETS, MODELS

MNIST = dict(image_size=28, stem_stride=2)


def build(**kwargs):
    torch.manual_seed(0)
    return MODELS.build(dict(type="DigitsMTLNet", **kwargs))


@pytest.mark.parametrize(
    ("size", "trunk_params"),
    [
        # 3×3 convs 1→16→32 (160 + 4640), then the linear layer from 32 × side² to 64 features
        (dict(), 160 + 4640 + 32 * 4 * 4 * 64 + 64),
        (MNIST, 160 + 4640 + 32 * 7 * 7 * 64 + 64),
    ],
)
def test_trunk_follows_the_image_size(size: dict, trunk_params: int) -> None:
    model = build(**size)
    trunk = sum(p.numel() for n, p in model.named_parameters() if n.startswith("trunk."))
    assert trunk == trunk_params
    inputs, labels = model.probe_batch()
    side = size.get("image_size", 8)
    assert inputs.shape == (2, 1, side, side)
    logits = model(inputs)
    assert logits["digit"].shape == (2, 10) and logits["parity"].shape == (2, 2)
    assert set(model.parameter_tasks()["trunk.0.weight"]) == {"digit", "parity"}


def test_training_steps_on_mnist_decrease_both_losses() -> None:
    dataset = DATASETS.build(dict(type="MNISTMTL", split="train"))
    batch = default_collate([dataset[i] for i in range(0, 4000, 40)])  # 100 images, all digits
    model = build(**MNIST, balancer=dict(type="EqualWeighting"))
    optim_wrapper = MTLOptimWrapper(torch.optim.Adam(model.parameters(), lr=3e-3))
    logs = [model.train_step(batch, optim_wrapper) for _ in range(15)]
    for task in ("digit", "parity"):
        first, last = (float(log[f"loss_{task}"].detach()) for log in (logs[0], logs[-1]))
        assert last < 0.8 * first, (task, first, last)
