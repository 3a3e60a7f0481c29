"""HybridDINO: the one-to-many queries add losses and leave DINO's own computation untouched."""

from __future__ import annotations

import pytest
import torch

from adperception.models.heads import DetectionHead
from tests.models.test_detection_head import DINO, EMBED, NUM_CLASSES, _feats, _mixed_batch

EXTRA = 30  # one-to-many queries
K = 3


def _pair() -> tuple[DetectionHead, DetectionHead]:
    """DINO and HybridDINO heads with the same weights; the hybrid's extra query rows random."""
    torch.manual_seed(0)
    dino = DetectionHead(detector=DINO, num_classes=NUM_CLASSES, in_channels=EMBED)
    dino.init_weights()
    hybrid_cfg = dict(DINO, type="HybridDINO", num_one2many=EXTRA, k_one2many=K)
    hybrid = DetectionHead(detector=hybrid_cfg, num_classes=NUM_CLASSES, in_channels=EMBED)
    hybrid.init_weights()
    state = dino.state_dict()
    key = "detector.query_embedding.weight"
    extra_rows = hybrid.state_dict()[key][DINO["num_queries"] :]
    state[key] = torch.cat([state[key], extra_rows])
    hybrid.load_state_dict(state)
    return dino, hybrid


def test_the_main_queries_compute_what_dino_computes() -> None:
    """Masked attention keeps the extra set invisible: with the same weights and the same
    denoising noise (same seed), every DINO loss term is the same, and o2m terms are added for
    each decoder layer."""
    dino, hybrid = _pair()
    samples, pad_shape = _mixed_batch()
    feats = _feats(len(samples), pad_shape, EMBED)
    torch.manual_seed(1)
    expected = dino.loss(feats, samples)
    torch.manual_seed(1)
    losses = hybrid.loss(feats, samples)
    extra = {k for k in losses if k.startswith("loss_o2m_")}
    layers = DINO["decoder"]["num_layers"]
    assert extra == {f"loss_o2m_{t}" for t in ("cls", "bbox", "iou")} | {
        f"loss_o2m_d{i}_{t}" for i in range(layers - 1) for t in ("cls", "bbox", "iou")
    }
    assert set(losses) - extra == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value, rtol=1e-5, atol=1e-6)
    assert all(torch.isfinite(losses[k]) and losses[k] > 0 for k in extra)


def test_only_the_one2many_losses_train_the_extra_queries() -> None:
    _, hybrid = _pair()
    samples, pad_shape = _mixed_batch()
    losses = hybrid.loss(_feats(len(samples), pad_shape, EMBED), samples)
    weight = hybrid.detector.query_embedding.weight
    main = sum(v for k, v in losses.items() if not k.startswith("loss_o2m_"))
    (grad,) = torch.autograd.grad(main, weight, retain_graph=True)
    assert grad[DINO["num_queries"] :].abs().sum() == 0
    assert grad[: DINO["num_queries"]].abs().sum() > 0
    (grad,) = torch.autograd.grad(losses["loss_o2m_cls"], weight)
    assert grad[DINO["num_queries"] :].abs().sum() > 0
    assert grad[: DINO["num_queries"]].abs().sum() == 0


def test_inference_is_dinos() -> None:
    dino, hybrid = _pair()
    dino.eval()
    hybrid.eval()
    with torch.no_grad():
        feats = _feats(1, (64, 96), EMBED)
        for got, want in zip(hybrid(feats), dino(feats), strict=True):
            torch.testing.assert_close(got, want)
    assert got.shape == (1, DINO["num_queries"], 4)


def test_the_one2many_weight_scales_its_losses() -> None:
    _, hybrid = _pair()
    samples, pad_shape = _mixed_batch()
    feats = _feats(len(samples), pad_shape, EMBED)
    torch.manual_seed(1)
    full = hybrid.loss(feats, samples)
    hybrid.detector.one2many_weight = 0.5
    torch.manual_seed(1)
    half = hybrid.loss(feats, samples)
    torch.testing.assert_close(half["loss_o2m_iou"], 0.5 * full["loss_o2m_iou"])
    torch.testing.assert_close(half["loss_iou"], full["loss_iou"])


@pytest.mark.parametrize(
    "bad", [dict(num_one2many=-1), dict(k_one2many=0), dict(one2many_weight=-1.0)]
)
def test_rejects_bad_settings(bad: dict) -> None:
    with pytest.raises(ValueError, match="HybridDINO needs"):
        DetectionHead(
            detector=dict(DINO, type="HybridDINO", **bad),
            num_classes=NUM_CLASSES,
            in_channels=EMBED,
        )
