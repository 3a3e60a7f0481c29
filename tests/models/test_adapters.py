"""Adapters checked against their formulas and against the plain layers they wrap."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from adperception.models.layers import (
    ADAPTER_TYPES,
    AdaptedBlock,
    BottleneckAdapter,
    LoRALinear,
    adapter_parameters,
    add_adapters,
    add_bottleneck_adapters,
    inject_lora,
)


def _randomise_(module: nn.Module) -> None:
    """Overwrite every parameter with N(0, 1), so zero-initialised paths become active."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()


@pytest.mark.parametrize("channel_dim", [-1, 1])
def test_bottleneck_adapter_is_identity_at_init_and_matches_formula(channel_dim: int) -> None:
    torch.manual_seed(0)
    adapter = BottleneckAdapter(8, reduction=4, channel_dim=channel_dim)
    x = torch.randn(2, 5, 6, 8)  # NHWC
    x_in = x if channel_dim == -1 else x.permute(0, 3, 1, 2)
    assert adapter.down.out_features == 2
    assert torch.equal(adapter(x_in), x_in)

    _randomise_(adapter)
    w1, b1 = adapter.down.weight, adapter.down.bias
    w2, b2 = adapter.up.weight, adapter.up.bias
    hidden = torch.einsum("bhwc,kc->bhwk", x, w1) + b1
    expected = x + torch.einsum("bhwk,ck->bhwc", F.gelu(hidden), w2) + b2
    out = adapter(x_in)
    out = out if channel_dim == -1 else out.permute(0, 2, 3, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_lora_linear_is_base_at_init_and_adds_scaled_low_rank_update() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    lora = LoRALinear(base, rank=2, alpha=3.0)
    x = torch.randn(3, 7, 6)
    assert lora.base is base
    assert torch.equal(lora(x), base(x))
    assert lora.lora_a.abs().sum() > 0

    with torch.no_grad():
        lora.lora_b.normal_()
    delta = (lora.lora_b @ lora.lora_a) * (3.0 / 2)
    torch.testing.assert_close(lora(x), F.linear(x, base.weight + delta, base.bias))


def test_lora_on_pointwise_conv_equals_lora_on_the_same_linear() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, kernel_size=1)
    linear = nn.Linear(6, 4)
    with torch.no_grad():
        linear.weight.copy_(conv.weight[:, :, 0, 0])
        linear.bias.copy_(conv.bias)
    lora_conv = LoRALinear(conv, rank=3, alpha=6.0)
    lora_linear = LoRALinear(linear, rank=3, alpha=6.0)
    with torch.no_grad():
        lora_conv.lora_b.normal_()
        lora_linear.lora_a.copy_(lora_conv.lora_a)
        lora_linear.lora_b.copy_(lora_conv.lora_b)
    x = torch.randn(2, 6, 5, 7)
    expected = lora_linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(lora_conv(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "layer", [nn.Conv2d(4, 4, kernel_size=3), nn.Conv2d(4, 4, 1, groups=2), nn.LayerNorm(4)]
)
def test_lora_rejects_layers_that_are_not_linear_maps_over_channels(layer: nn.Module) -> None:
    with pytest.raises((ValueError, TypeError)):
        LoRALinear(layer)


def _mlp_blocks() -> nn.Sequential:
    block = nn.Sequential()
    block.add_module("mlp", nn.Sequential())
    block.mlp.add_module("fc1", nn.Linear(8, 16))
    block.mlp.add_module("act", nn.GELU())
    block.mlp.add_module("fc2", nn.Linear(16, 8))
    return nn.Sequential(block, copy.deepcopy(block))


def test_inject_lora_wraps_exactly_the_targets_in_place() -> None:
    torch.manual_seed(0)
    blocks = _mlp_blocks()
    reference = copy.deepcopy(blocks)
    fc1 = blocks[0].mlp.fc1
    wrapped = inject_lora(blocks, targets=("mlp.fc1",), rank=2, alpha=4.0)
    assert len(wrapped) == 2
    assert isinstance(blocks[0].mlp.fc1, LoRALinear) and blocks[0].mlp.fc1.base is fc1
    assert isinstance(blocks[1].mlp.fc2, nn.Linear)
    x = torch.randn(3, 8)
    assert torch.equal(blocks(x), reference(x))
    with pytest.raises(ValueError, match="mlp.fc3"):
        inject_lora(blocks, targets=("mlp.fc3",))


def test_bottleneck_adapters_follow_every_block() -> None:
    torch.manual_seed(0)
    blocks = _mlp_blocks()
    reference = copy.deepcopy(blocks)
    adapters = add_bottleneck_adapters(blocks, dim=8, reduction=2)
    assert len(adapters) == 2
    assert all(isinstance(b, AdaptedBlock) for b in blocks)
    x = torch.randn(3, 8)
    assert torch.equal(blocks(x), reference(x))
    _randomise_(blocks[1].adapter)
    expected = adapters[1](reference(x))
    torch.testing.assert_close(blocks(x), expected)


def test_adapter_parameters_are_exactly_the_added_ones() -> None:
    blocks = _mlp_blocks()
    backbone_names = {n for n, _ in blocks.named_parameters()}
    add_bottleneck_adapters(blocks, dim=8, reduction=2)
    inject_lora(blocks, targets=("mlp.fc2",), rank=3)
    names = dict(adapter_parameters(blocks))
    all_names = dict(blocks.named_parameters())
    assert set(names) <= set(all_names)
    assert all(all_names[n] is p for n, p in names.items())
    # bottleneck: (8·4 + 4) + (4·8 + 8) per block; LoRA on fc2 (16 -> 8): 3·16 + 8·3 per block
    assert sum(p.numel() for p in names.values()) == 2 * (36 + 40) + 2 * (48 + 24)
    # the backbone's own weights keep their count, now under renamed modules
    backbone_numel = sum(p.numel() for n, p in all_names.items() if n not in names)
    assert backbone_numel == 2 * (8 * 16 + 16 + 16 * 8 + 8)
    assert len(all_names) - len(names) == len(backbone_names)


def test_add_adapters_rejects_unknown_type() -> None:
    with pytest.raises(KeyError, match="prefix"):
        add_adapters(nn.Module(), {"type": "prefix"}, dim=8, channel_dim=1, lora_targets=())


@pytest.mark.parametrize("kind", ADAPTER_TYPES)
def test_adapters_in_a_timm_stage_start_as_identity_and_learn(kind: str) -> None:
    """On a real ConvNeXt stage (NCHW, 1×1-conv MLP): same output at init; one SGD step on the
    adapter parameters alone changes the output and leaves every backbone weight as it was.
    Layer scale starts at 1 (timm's 1e-6 would hide the MLP, as trained weights do not)."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=0, ls_init_value=1.0)
    stage = model.stages[1]
    reference = copy.deepcopy(stage)
    added = add_adapters(
        stage, {"type": kind}, dim=80, channel_dim=1, lora_targets=("mlp.fc1", "mlp.fc2")
    )
    assert added
    x = torch.randn(1, 40, 16, 16)
    before = stage(x)
    assert torch.equal(before, reference(x))

    params = dict(adapter_parameters(stage))
    backbone = {n: p.detach().clone() for n, p in stage.named_parameters() if n not in params}
    optimizer = torch.optim.SGD(params.values(), lr=0.1)
    stage(x).square().mean().backward()
    optimizer.step()
    after = stage(x)
    assert not torch.allclose(after, before)
    for name, param in stage.named_parameters():
        if name in backbone:
            assert torch.equal(param, backbone[name]), name
