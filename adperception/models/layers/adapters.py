"""Parameter-efficient task adapters, zero-initialised so that a network with adapters computes
exactly the function of the network without them until the adapters are trained.

- ``BottleneckAdapter``: ``x + up(gelu(down(x)))`` over the channel dimension, ``up`` zero.
- ``LoRALinear``: a linear map (``nn.Linear`` or a 1×1 ``nn.Conv2d``) plus ``B·A·x·alpha/rank``,
  ``A`` Kaiming-uniform, ``B`` zero.

``add_adapters(stage, cfg, ...)`` puts the adapter a config names (``dict(type='bottleneck',
reduction=4)`` or ``dict(type='lora', rank=8, alpha=16.0)``) into one backbone stage.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adperception.models.layers.hyper_adapters import AdapterHypernetwork


class BottleneckAdapter(nn.Module):
    """Residual bottleneck ``x + up(gelu(down(x)))`` acting on dimension ``channel_dim`` of x.

    Args:
        dim: channels of x.
        reduction: hidden width is ``max(1, dim // reduction)``.
        channel_dim: where the channels are: -1 for NHWC / token sequences, 1 for NCHW maps.
    """

    def __init__(self, dim: int, *, reduction: int = 4, channel_dim: int = -1) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.channel_dim = channel_dim
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = x.movedim(self.channel_dim, -1)
        h = self.up(self.act(self.down(h)))
        return x + h.movedim(-1, self.channel_dim)


class AdaptedBlock(nn.Module):
    """A backbone block followed by its adapter: ``adapter(block(x))``."""

    def __init__(self, block: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter(self.block(x))


class LoRALinear(nn.Module):
    """``base(x) + B(A(x)) · alpha / rank`` for a frozen-able ``base`` linear map.

    ``base`` is an ``nn.Linear`` (features last) or a 1×1 ``nn.Conv2d`` (NCHW, as timm's
    ``ConvMlp`` uses); the low-rank path takes the same layout. ``lora_a`` (rank × in) is
    Kaiming-uniform, ``lora_b`` (out × rank) zero.
    """

    def __init__(self, base: nn.Linear | nn.Conv2d, *, rank: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        if isinstance(base, nn.Conv2d):
            if base.kernel_size != (1, 1) or base.stride != (1, 1) or base.groups != 1:
                raise ValueError(f"LoRA needs a pointwise convolution, got {base}")
            in_features, out_features = base.in_channels, base.out_channels
        elif isinstance(base, nn.Linear):
            in_features, out_features = base.in_features, base.out_features
        else:
            raise TypeError(f"LoRA wraps nn.Linear or 1×1 nn.Conv2d, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, **like))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.base, nn.Conv2d):
            hidden = F.conv2d(x, self.lora_a[..., None, None])
            delta = F.conv2d(hidden, self.lora_b[..., None, None])
        else:
            delta = F.linear(F.linear(x, self.lora_a), self.lora_b)
        return self.base(x) + delta * self.scale


def add_bottleneck_adapters(
    blocks: nn.Sequential, *, dim: int, reduction: int = 4, channel_dim: int = -1
) -> list[BottleneckAdapter]:
    """Wrap every block of ``blocks`` in place as ``AdaptedBlock(block, BottleneckAdapter)``."""
    adapters = []
    for index, block in enumerate(blocks):
        adapter = BottleneckAdapter(dim, reduction=reduction, channel_dim=channel_dim)
        blocks[index] = AdaptedBlock(block, adapter)
        adapters.append(adapter)
    return adapters


def inject_lora(
    module: nn.Module, *, targets: Sequence[str], rank: int = 8, alpha: float = 16.0
) -> list[LoRALinear]:
    """Replace, in place, every linear map under ``module`` whose qualified name ends with one of
    ``targets`` (e.g. ``'mlp.fc1'``, ``'attn.qkv'``) by a ``LoRALinear`` around it.

    Raises ValueError when nothing matches, so that a misspelt target cannot pass silently.
    """
    matches = [
        name
        for name, sub in module.named_modules()
        if isinstance(sub, nn.Linear | nn.Conv2d)
        and any(name == t or name.endswith(f".{t}") for t in targets)
    ]
    if not matches:
        raise ValueError(f"no linear layer under the module matches LoRA targets {list(targets)}")
    wrapped = []
    for name in matches:
        parent_name, _, child_name = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        lora = LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha)
        setattr(parent, child_name, lora)
        wrapped.append(lora)
    return wrapped


ADAPTER_TYPES = ("bottleneck", "lora")
"""Adapter ``type`` names ``add_adapters`` puts into one stage. A config may also name
``hyper``, which spans every branch, so ``BranchedBackbone`` adds it (``hyper_adapters``)."""


def add_adapters(
    stage: nn.Module,
    cfg: Mapping[str, Any],
    *,
    dim: int,
    channel_dim: int,
    lora_targets: Sequence[str],
) -> list[nn.Module]:
    """Insert the adapter ``cfg`` describes into a backbone stage (a module with ``.blocks``).

    Args:
        stage: timm stage; bottleneck adapters follow each of its ``blocks``.
        cfg: ``dict(type='bottleneck', reduction=...)`` or ``dict(type='lora', rank=..., alpha=...,
            targets=...)``; LoRA ``targets`` default to ``lora_targets``.
        dim: channels of the stage's blocks.
        channel_dim: channel dimension of the blocks' outputs (1 NCHW, -1 NHWC).
        lora_targets: the backbone family's attention/MLP linear names.

    Returns:
        The inserted adapter modules.
    """
    kwargs = dict(cfg)
    kind = kwargs.pop("type")
    if kind == "bottleneck":
        return add_bottleneck_adapters(stage.blocks, dim=dim, channel_dim=channel_dim, **kwargs)
    if kind == "lora":
        kwargs.setdefault("targets", lora_targets)
        return inject_lora(stage, **kwargs)
    raise KeyError(
        f"unknown adapter type {kind!r}; choose from {ADAPTER_TYPES}, or 'hyper' for the "
        "backbone's hypernetwork adapters"
    )


def adapter_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Named parameters under ``module`` that belong to adapters (the rest is the backbone)."""
    for name, sub in module.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(sub, BottleneckAdapter | AdapterHypernetwork):
            for param_name, param in sub.named_parameters():
                yield prefix + param_name, param
        elif isinstance(sub, LoRALinear):
            yield prefix + "lora_a", sub.lora_a
            yield prefix + "lora_b", sub.lora_b
