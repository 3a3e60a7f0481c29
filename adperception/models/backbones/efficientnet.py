"""timm EfficientNet as ``BranchedBackbone`` stages, and checkpoints in efficientnet_pytorch's key
layout (``_conv_stem``, ``_blocks.N._expand_conv`` ...) mapped onto timm's (docs/design.md §4)."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

# efficientnet_pytorch -> timm, outside the blocks and inside a block without an expansion
# convolution (timm's DepthwiseSeparableConv) or with one (timm's InvertedResidual).
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename an efficientnet_pytorch state dict to ``model``'s timm EfficientNet keys.

    efficientnet_pytorch numbers its blocks 0..N-1 across stages; timm nests them by stage, so
    block ``k`` is the ``k``-th of ``model.blocks`` flattened. A key outside these layouts, or a
    state dict already in timm's, passes unchanged (and ``load_timm_weights`` reports it).
    """
    if "_conv_stem.weight" not in state_dict:
        return state_dict
    positions = [
        f"blocks.{s}.{i}" for s, group in enumerate(model.blocks) for i in range(len(group))
    ]
    expanded = {
        m[1] for key in state_dict if (m := _BLOCK_KEY.fullmatch(key)) and m[2] == "_expand_conv"
    }
    out = {}
    for key, value in state_dict.items():
        module, _, param = key.partition(".")
        block = _BLOCK_KEY.fullmatch(key)
        if block and int(block[1]) < len(positions):
            parts = _INVERTED_RESIDUAL if block[1] in expanded else _DEPTHWISE_SEPARABLE
            if block[2] in parts:
                key = f"{positions[int(block[1])]}.{parts[block[2]]}.{block[3]}"
        elif module in _TOP:
            key = f"{_TOP[module]}.{param}"
        out[key] = value
    return out


class EfficientNetStage(nn.Module):
    """timm EfficientNet block groups that together make one output stride: ``transition`` (all
    but the last) then ``blocks`` (the last group: every block's output has the stage's width, so
    bottleneck adapters can follow each)."""

    def __init__(self, groups: Sequence[nn.Sequential]) -> None:
        super().__init__()
        self.transition = nn.Sequential(*groups[:-1])
        self.blocks = groups[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.transition(x))


def efficientnet_stages(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """The stem and the 4 stages at strides 4..32 of a timm EfficientNet.

    Stage ``i`` holds the block groups after the one that ends stage ``i - 1`` up to the one
    timm's ``feature_info`` names for its stride (for Lite0: groups 0-1, 2, 3-4, 5-6); the
    stride-2 level of ``feature_info`` falls inside stage 0.
    """
    ends = [int(info["module"].rpartition(".")[2]) for info in model.feature_info[-4:]]
    starts = [0, *(end + 1 for end in ends[:-1])]
    stem = nn.Sequential(OrderedDict(conv_stem=model.conv_stem, bn1=model.bn1))
    stages = [
        EfficientNetStage(list(model.blocks[start : end + 1]))
        for start, end in zip(starts, ends, strict=True)
    ]
    return stem, stages
