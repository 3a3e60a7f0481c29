"""BranchedBackbone against timm's own models: same function at init, the promised sharing
structure, gradients that confirm ``parameter_tasks``, freezing and local weight loading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import safetensors.torch
import timm
import timm.models._builder
import torch
from torch import Tensor, nn

from adperception.models.backbones import BranchedBackbone
from adperception.models.layers import adapter_parameters
from adperception.registry import MODELS

CONVNEXT = "convnext_atto"
SWIN = "swin_tiny_patch4_window7_224"
EFFICIENTNET = "tf_efficientnet_lite0"
MODEL_NAMES = (CONVNEXT, SWIN, EFFICIENTNET)
# the reference models: timm's own classes at any input size divisible by 32
REFERENCE_KWARGS = {CONVNEXT: {}, SWIN: {"strict_img_size": False}, EFFICIENTNET: {}}
STRIDES = (4, 8, 16, 32)
#: Every registered task; without ``branches`` each joins its default group (docs/design.md §3).
TASKS = frozenset({"det", "seg", "depth", "normals", "drivable", "lanes"})
SEMANTIC = {"det", "seg", "drivable", "lanes"}
ADAPTERS = {
    "bottleneck": {"type": "bottleneck", "reduction": 4},
    "lora": {"type": "lora", "rank": 4, "alpha": 8.0},
    "both": [{"type": "bottleneck", "reduction": 8}, {"type": "lora", "rank": 2, "alpha": 2.0}],
}
BRANCHINGS = {
    "one_group": {"all": ["det", "seg", "depth", "normals"]},
    "default": {"semantic": ["det", "seg", "drivable", "lanes"], "geometric": ["depth", "normals"]},
    "per_task": {"det": ["det"], "seg": ["seg"], "depth": ["depth"], "normals": ["normals"]},
}
# ConvNeXt layer scale starts at 1e-6 in timm, which would hide the blocks' MLPs from gradient
# and adapter tests; trained weights have layer scales of order 0.1..1.
LIVE_CONVNEXT = {"ls_init_value": 1.0}


@pytest.fixture(autouse=True)
def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to fetch pretrained weights fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pretrained-weight download was attempted")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def _reference(model_name: str) -> nn.Module:
    torch.manual_seed(0)
    kwargs = REFERENCE_KWARGS[model_name]
    return timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    """Per model name: a random timm reference model and its weights saved to a local file,
    as a plain state dict (ConvNeXt, EfficientNet) or wrapped as {'state_dict': sd} (Swin)."""
    out = {}
    for name in MODEL_NAMES:
        model = _reference(name)
        path = tmp_path_factory.mktemp("weights") / f"{name}.pth"
        state_dict = model.state_dict()
        torch.save({"state_dict": state_dict} if name == SWIN else state_dict, path)
        out[name] = (model, path)
    return out


def _stage_outputs(reference: nn.Module, x: Tensor) -> list[Tensor]:
    """timm's last 4 feature levels (EfficientNet's first, at stride 2, is inside stage 0)."""
    with torch.no_grad():
        return reference.forward_intermediates(x, intermediates_only=True)[-4:]


def _zero_initialised_adapter_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for _, p in adapter_parameters(module) if not p.any()]


@pytest.mark.parametrize("adapter", list(ADAPTERS))
@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_function_at_init_equals_timm_and_adapters_are_live(
    model_name: str, adapter: str, weights: dict[str, tuple[nn.Module, Path]]
) -> None:
    reference, path = weights[model_name]
    backbone = BranchedBackbone(
        model_name=model_name, pretrained=str(path), shared_stages=2, adapter=ADAPTERS[adapter]
    ).eval()
    assert backbone.strides == STRIDES
    assert backbone.groups == ("semantic", "geometric")
    assert backbone.task_groups == {
        "det": "semantic",
        "seg": "semantic",
        "depth": "geometric",
        "normals": "geometric",
        "drivable": "semantic",
        "lanes": "semantic",
    }
    # a second input size (any H, W divisible by 32) once per model
    for h, w in [(64, 128), (96, 160)] if adapter == "bottleneck" else [(64, 128)]:
        x = torch.randn(1, 3, h, w)
        expected = _stage_outputs(reference, x)
        assert backbone.out_channels == tuple(f.shape[1] for f in expected)
        with torch.no_grad():
            out = backbone(x)
        assert set(out) == {"semantic", "geometric"}
        for feats in out.values():
            assert len(feats) == 4
            for feat, ref, c, s in zip(
                feats, expected, backbone.out_channels, STRIDES, strict=True
            ):
                assert feat.shape == (1, c, h // s, w // s)
                assert torch.equal(feat, ref)

    # the zero-initialised halves made non-zero in one group change that group's later stages only
    with torch.no_grad():
        for p in _zero_initialised_adapter_params(backbone.branches["semantic"]):
            p.normal_(std=0.1)
        out = backbone(x)
    for i, ref in enumerate(expected):
        assert torch.equal(out["geometric"][i], ref)
        assert torch.equal(out["semantic"][i], ref) == (i < 2), i


@pytest.mark.parametrize("adapter", ["bottleneck", "lora"])
def test_one_sgd_step_on_adapters_changes_the_branch_outputs_only(adapter: str) -> None:
    torch.manual_seed(0)
    backbone = BranchedBackbone(
        model_name=CONVNEXT, shared_stages=2, adapter=ADAPTERS[adapter], model_kwargs=LIVE_CONVNEXT
    )
    x = torch.randn(1, 3, 64, 64)
    before = backbone(x)
    params = dict(adapter_parameters(backbone))
    frozen = {n: p.detach().clone() for n, p in backbone.named_parameters() if n not in params}
    optimizer = torch.optim.SGD(params.values(), lr=0.1)
    sum(f.square().mean() for feats in before.values() for f in feats).backward()
    optimizer.step()
    after = backbone(x)
    for group in backbone.groups:
        for i in range(4):
            assert torch.equal(after[group][i], before[group][i]) == (i < 2), (group, i)
    assert all(torch.equal(p, frozen[n]) for n, p in backbone.named_parameters() if n in frozen)


def _timm_stage_numels(reference: nn.Module) -> list[int]:
    """Parameter count of each of the 4 stages, the stem counted with stage 0."""
    numel = [sum(p.numel() for p in stage.parameters()) for stage in reference.stages]
    numel[0] += sum(p.numel() for p in reference.stem.parameters())
    return numel


@pytest.mark.parametrize("branching", list(BRANCHINGS))
@pytest.mark.parametrize("shared_stages", range(5))
def test_sharing_structure(shared_stages: int, branching: str) -> None:
    branches = BRANCHINGS[branching]
    backbone = BranchedBackbone(
        model_name=CONVNEXT, shared_stages=shared_stages, branches=branches, adapter=None
    ).eval()
    stage_numel = _timm_stage_numels(_reference(CONVNEXT))
    shared_numel = sum(stage_numel[:shared_stages])
    branch_numel = sum(stage_numel[shared_stages:])

    counts = backbone.trainable_parameter_counts()
    assert counts == {
        "shared": shared_numel,
        **{f"branch.{g}": branch_numel for g in branches},
        **{f"adapters.{g}": 0 for g in branches},
    }
    # every parameter is its own copy: no storage shared between groups or with the trunk
    pointers = [p.data_ptr() for p in backbone.parameters()]
    assert len(set(pointers)) == len(pointers)
    assert sum(p.numel() for p in backbone.parameters()) == (
        shared_numel + len(branches) * branch_numel
    )

    tasks = backbone.parameter_tasks()
    assert list(tasks) == [n for n, _ in backbone.named_parameters()]
    every = frozenset(t for group_tasks in branches.values() for t in group_tasks)
    for name, owners in tasks.items():
        group = re.match(r"branches\.(\w+)\.", name)
        assert owners == (frozenset(branches[group[1]]) if group else every), name

    # copies from the same initial weights: every group computes the same function at init;
    # the shared trunk runs once per forward
    calls = []
    first = backbone.trunk[0] if shared_stages else backbone.branches[backbone.groups[0]][0]
    first.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert len(calls) == 1
    for group in backbone.groups:
        assert all(
            torch.equal(a, b) for a, b in zip(out[group], out[backbone.groups[0]], strict=True)
        )


def test_parameter_tasks_example_of_the_default_layout() -> None:
    backbone = BranchedBackbone(model_name=CONVNEXT)
    tasks = backbone.parameter_tasks()
    assert tasks["trunk.0.stem.0.weight"] == TASKS
    stage3 = [n for n in tasks if n.startswith("branches.semantic.1.")]
    assert stage3 and all(tasks[n] == SEMANTIC for n in stage3)
    adapters = [n for n, _ in adapter_parameters(backbone.branches["geometric"])]
    assert adapters and all(
        tasks[f"branches.geometric.{n}"] == {"depth", "normals"} for n in adapters
    )


@pytest.mark.parametrize(
    ("model_name", "shared_stages"), [(CONVNEXT, 0), (CONVNEXT, 2), (SWIN, 2), (EFFICIENTNET, 2)]
)
def test_gradients_reach_exactly_the_parameters_parameter_tasks_names(
    model_name: str, shared_stages: int
) -> None:
    """A loss on group 'geometric' alone: gradients exist exactly where parameter_tasks names
    depth or normals, none reach the 'semantic' branch, and the stem's is non-zero."""
    torch.manual_seed(0)
    backbone = BranchedBackbone(
        model_name=model_name,
        shared_stages=shared_stages,
        adapter=ADAPTERS["both"],
        model_kwargs=LIVE_CONVNEXT if model_name == CONVNEXT else None,
    )
    out = backbone(torch.randn(1, 3, 64, 64))
    sum(f.square().mean() for f in out["geometric"]).backward()

    params = dict(backbone.named_parameters())
    with_grad = {n for n, p in params.items() if p.grad is not None}
    geometric = {n for n, t in backbone.parameter_tasks().items() if t & {"depth", "normals"}}
    assert with_grad == geometric
    assert all(params[n].grad is None for n in params if n.startswith("branches.semantic."))
    stem = "trunk.0.stem." if shared_stages else "branches.geometric.0.stem."
    stem_weight = next(p for n, p in params.items() if n.startswith(stem))
    assert stem_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_freeze_backbone_trains_adapters_only(adapter: str) -> None:
    backbone = BranchedBackbone(
        model_name=CONVNEXT, adapter=ADAPTERS[adapter], freeze_backbone=True
    )
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    adapter_names = {n for n, _ in adapter_parameters(backbone)}
    assert trainable == adapter_names
    counts = backbone.trainable_parameter_counts()
    assert counts["shared"] == 0
    for group in backbone.groups:
        assert counts[f"branch.{group}"] == 0
        assert counts[f"adapters.{group}"] == sum(
            p.numel() for _, p in adapter_parameters(backbone.branches[group])
        )
        assert counts[f"adapters.{group}"] > 0
    frozen = BranchedBackbone(model_name=CONVNEXT, adapter=None, freeze_backbone=True)
    assert not any(p.requires_grad for p in frozen.parameters())


def _timm_name(name: str, shared_stages: int) -> str:
    """The timm ConvNeXt parameter a BranchedBackbone parameter (adapter=None) was copied from."""
    name = re.sub(r"^branches\.\w+\.(\d+)\.", lambda m: f"u{int(m[1]) + shared_stages}.", name)
    name = re.sub(r"^trunk\.(\d+)\.", r"u\1.", name)
    name = name.replace("u0.stem.", "stem.").replace("u0.stage.", "stages.0.")
    return re.sub(r"^u(\d)\.", r"stages.\1.", name)


def _assert_weights_equal(backbone: BranchedBackbone, reference: nn.Module) -> None:
    ref = {n: p for n, p in reference.named_parameters() if not n.startswith("head.")}
    ours = dict(backbone.named_parameters())
    assert {_timm_name(n, backbone.shared_stages) for n in ours} == set(ref)
    for name, param in ours.items():
        assert torch.equal(param, ref[_timm_name(name, backbone.shared_stages)]), name


@pytest.mark.parametrize("layout", ["plain", "model", "state_dict", "safetensors", "official"])
def test_pretrained_weights_load_from_a_local_file(tmp_path: Path, layout: str) -> None:
    reference = _reference(CONVNEXT)
    state_dict = reference.state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "safetensors":
        safetensors.torch.save_file(state_dict, str(path))
    elif layout == "official":
        torch.save({"model": _to_official_convnext(state_dict)}, path)
    elif layout == "plain":
        torch.save(state_dict, path)
    else:
        torch.save({layout: state_dict}, path)
    torch.manual_seed(1)  # a different random init, overwritten by the file
    backbone = BranchedBackbone(
        model_name=CONVNEXT, pretrained=str(path), shared_stages=1, adapter=None
    )
    _assert_weights_equal(backbone, reference)


def _to_official_convnext(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm ConvNeXt keys -> the facebookresearch/ConvNeXt release layout (Linear pwconvs)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("stem.", "downsample_layers.0.")
        key = re.sub(r"stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        key = key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        key = key.replace("head.norm.", "norm.")
        if "pwconv" in key and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[key] = value.clone()
    assert "downsample_layers.1.1.weight" in out and "stages.2.5.pwconv1.weight" in out
    return out


def test_missing_or_incomplete_weights_are_errors(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        BranchedBackbone(model_name=CONVNEXT, pretrained=str(missing))
    state_dict = _reference(CONVNEXT).state_dict()
    del state_dict["stages.3.blocks.1.conv_dw.weight"]
    incomplete = tmp_path / "incomplete.pth"
    torch.save(state_dict, incomplete)
    with pytest.raises(ValueError, match="stages.3.blocks.1.conv_dw.weight"):
        BranchedBackbone(model_name=CONVNEXT, pretrained=str(incomplete))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"shared_stages": 5}, ValueError),
        ({"branches": {"a": ["det"], "b": ["det", "seg"]}}, ValueError),
        ({"branches": {"a.b": ["det"]}}, ValueError),
        ({"branches": {}}, ValueError),
        ({"model_name": "resnet18"}, ValueError),
        ({"model_name": "no_such_model"}, KeyError),
        ({"adapter": {"type": "prefix"}}, KeyError),
    ],
)
def test_invalid_configurations_are_rejected(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        BranchedBackbone(**{"model_name": CONVNEXT, **kwargs})


def test_built_from_the_registry() -> None:
    backbone = MODELS.build(
        {
            "_scope_": "adperception",  # independent of the default scope other tests leave
            "type": "BranchedBackbone",
            "model_name": CONVNEXT,
            "adapter": {"type": "lora"},
        }
    )
    assert isinstance(backbone, BranchedBackbone)
    assert backbone.out_channels == (40, 80, 160, 320)


@pytest.mark.parametrize("norm_eval", [True, False])
def test_norm_eval_keeps_batchnorm_statistics_and_trains_its_weights(norm_eval: bool) -> None:
    backbone = BranchedBackbone(model_name=EFFICIENTNET, norm_eval=norm_eval)
    parent = nn.ModuleList([backbone]).eval().train()  # as a runner switches the whole model
    assert parent.training and backbone.training
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.training != norm_eval for m in norms)
    before = {n: b.clone() for n, b in backbone.named_buffers()}
    out = backbone(torch.randn(2, 3, 64, 64))
    sum(f.square().mean() for feats in out.values() for f in feats).backward()
    changed = [n for n, b in backbone.named_buffers() if not torch.equal(b, before[n])]
    assert bool(changed) != norm_eval
    assert all(m.weight.grad is not None and m.bias.grad is not None for m in norms)
