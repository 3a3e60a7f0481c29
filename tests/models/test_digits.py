"""DigitsMTLNet: which parameters each task uses, the loss scale, predictions, and training
under PCGrad."""

from __future__ import annotations

import pytest
import torch
from mmengine.dataset import default_collate

from adperception.engine.optim_wrapper import MTLOptimWrapper
from adperception.registry import DATASETS, MODELS


def build(**kwargs):
    torch.manual_seed(0)
    return MODELS.build(dict(type="DigitsMTLNet", **kwargs))


@pytest.fixture(scope="module")
def batch() -> dict:
    dataset = DATASETS.build(dict(type="DigitsMTL", split="train"))
    return default_collate([dataset[i] for i in range(64)])


def test_trunk_is_shared_and_heads_are_private() -> None:
    model = build(balancer=dict(type="UncertaintyWeighting"))
    owners = model.parameter_tasks()
    both = frozenset({"digit", "parity"})
    for name in owners:
        if name.startswith("trunk."):
            assert owners[name] == both, name
        elif name.startswith("heads."):
            assert owners[name] == {name.split(".")[1]}, name
        else:  # the balancer's own (uncertainty weighting's log-variances)
            assert name.startswith("balancer.") and owners[name] == frozenset()
    trunk = sum(p.numel() for n, p in model.named_parameters() if n.startswith("trunk."))
    assert 10_000 <= trunk <= 50_000


def test_loss_scale_multiplies_exactly(batch: dict) -> None:
    plain, scaled = build(), build(loss_scale=dict(parity=100.0))
    assert torch.equal(plain.trunk[0].weight, scaled.trunk[0].weight)
    a = plain.loss(batch["inputs"], batch["data_samples"])
    b = scaled.loss(batch["inputs"], batch["data_samples"])
    assert torch.equal(b["loss_digit"], a["loss_digit"])
    assert torch.equal(b["loss_parity"], 100.0 * a["loss_parity"])
    with pytest.raises(ValueError, match="unknown task"):
        build(loss_scale=dict(colour=2.0))


def test_predict_and_tensor_modes(batch: dict) -> None:
    model = build().eval()
    logits = model(batch["inputs"][:5])
    assert logits["digit"].shape == (5, 10) and logits["parity"].shape == (5, 2)
    preds = model(
        batch["inputs"][:5], {k: v[:5] for k, v in batch["data_samples"].items()}, "predict"
    )
    assert len(preds) == 5
    assert preds[0]["pred_digit"] == int(logits["digit"][0].argmax())
    assert preds[0]["gt_parity"] == int(batch["data_samples"]["parity"][0])
    assert set(model.predict(batch["inputs"][:1])[0]) == {"pred_digit", "pred_parity"}
    with pytest.raises(ValueError, match="mode"):
        model(batch["inputs"], mode="logits")


def test_pcgrad_training_steps_decrease_both_losses(batch: dict) -> None:
    model = build(balancer=dict(type="PCGrad"))
    optim_wrapper = MTLOptimWrapper(torch.optim.Adam(model.parameters(), lr=3e-3))
    logs = [model.train_step(batch, optim_wrapper) for _ in range(15)]
    assert model.balancer.stats is not None  # the steps did per-task surgery
    for task in ("digit", "parity"):
        first, last = (float(log[f"loss_{task}"].detach()) for log in (logs[0], logs[-1]))
        assert last < 0.8 * first, (task, first, last)
