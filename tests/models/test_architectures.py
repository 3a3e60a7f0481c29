"""The multi-task architectures beside hard and partial sharing: cross-stitch and sluice units,
MTAN task attention, task-specific norms and hypernetwork adapters; each against its defining
formula or against the plain branched backbone it reduces to, and each in the full model with
the parameter→task tracing the balancers' sharing groups come from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from torch import nn

from adperception.balancing.layout import SharingLayout
from adperception.engine import setup_runtime
from adperception.engine.optim_wrapper import MTLOptimWrapper
from adperception.models.backbones import (
    BranchedBackbone,
    CrossStitchBackbone,
    TaskAttentionBackbone,
)
from adperception.models.layers import CrossStitch, TaskAttention, adapter_parameters
from adperception.registry import MODELS
from tests.models.batches_for_tests import synthdrive_batch

ROOT = Path(__file__).resolve().parents[2]
CONVNEXT = "convnext_atto"
LIVE_CONVNEXT = {"ls_init_value": 1.0}  # timm's 1e-6 layer scale would hide the blocks
BRANCHES = {"semantic": ["det", "seg"], "geometric": ["depth", "normals"]}
TASKS = ("det", "seg", "depth", "normals")
ARCHITECTURES = (
    "hard_sharing",
    "cross_stitch",
    "sluice",
    "mtan",
    "hyper_adapters",
    "task_norms",
    "multi_decoder",
)


def test_cross_stitch_is_the_weighted_sum_of_the_branches() -> None:
    torch.manual_seed(0)
    unit = CrossStitch(3, 4, init_self=0.8)
    assert torch.allclose(unit.alpha.sum(dim=1), torch.ones(3))
    assert torch.allclose(unit.alpha.diagonal(), torch.full((3,), 0.8))
    with torch.no_grad():
        unit.alpha.normal_()
    xs = [torch.randn(2, 4, 5, 6) for _ in range(3)]
    out = unit(xs)
    a = unit.alpha.detach()
    for g in range(3):
        expected = a[g, 0] * xs[0] + a[g, 1] * xs[1] + a[g, 2] * xs[2]
        torch.testing.assert_close(out[g], expected)


def test_sluice_mixes_channel_subspaces_and_nhwc_matches_nchw() -> None:
    """Two branches, two subspaces of 2 channels each: output subspace s of branch g is
    Σ_(h, r) α[2g + s, 2h + r] · (subspace r of branch h)."""
    torch.manual_seed(0)
    unit = CrossStitch(2, 4, subspaces=2, init_self=0.7)
    assert torch.equal(
        unit.alpha.detach(),
        torch.tensor([[0.7, 0, 0.3, 0], [0, 0.7, 0, 0.3], [0.3, 0, 0.7, 0], [0, 0.3, 0, 0.7]]),
    )
    with torch.no_grad():
        unit.alpha.normal_()
    xs = [torch.randn(1, 4, 3, 3) for _ in range(2)]
    parts = [xs[0][:, :2], xs[0][:, 2:], xs[1][:, :2], xs[1][:, 2:]]
    a = unit.alpha.detach()
    expected = [sum(a[p, q] * parts[q] for q in range(4)) for p in range(4)]
    out = unit(xs)
    torch.testing.assert_close(out[0], torch.cat(expected[:2], 1))
    torch.testing.assert_close(out[1], torch.cat(expected[2:], 1))
    unit.channel_dim = -1
    nhwc = unit([x.permute(0, 2, 3, 1) for x in xs])
    for g in range(2):
        torch.testing.assert_close(nhwc[g].permute(0, 3, 1, 2), out[g])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_branches=1, channels=4), "two or more branches"),
        (dict(num_branches=2, channels=5, subspaces=2), "do not split"),
        (dict(num_branches=2, channels=4, init_self=1.5), "init_self"),
    ],
)
def test_cross_stitch_rejects_what_it_cannot_mix(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CrossStitch(**kwargs)


def assert_same_maps(out: dict, expected: dict, *, exact: bool = False) -> None:
    """Every group's 4 maps equal (``exact``) or close (float tolerance) to ``expected``'s."""
    assert set(out) == set(expected) == set(BRANCHES)
    for group in BRANCHES:
        for a, b in zip(out[group], expected[group], strict=True):
            if exact:
                assert torch.equal(a, b), group
            else:
                torch.testing.assert_close(a, b)


def _copy_shared_weights(source: nn.Module, target: nn.Module) -> None:
    """``target``'s weights that ``source`` has under the same name, from ``source``."""
    own = target.state_dict()
    own.update({k: v for k, v in source.state_dict().items() if k in own})
    target.load_state_dict(own)


@pytest.mark.parametrize("model_name", [CONVNEXT, "tf_efficientnet_lite0"])
def test_cross_stitch_backbone_at_identity_is_the_branched_backbone_and_mixes_after(
    model_name: str,
) -> None:
    """With α = identity the units pass every branch through: the outputs are those of the
    branched backbone of the same weights. Mixed, a loss on one group reaches the other's
    branch, and ``parameter_tasks`` says every branch serves every task."""
    torch.manual_seed(0)
    kwargs = dict(model_name=model_name, shared_stages=1, branches=BRANCHES, adapter=None)
    kwargs["model_kwargs"] = LIVE_CONVNEXT if model_name == CONVNEXT else None
    plain = BranchedBackbone(**kwargs).eval()
    stitched = CrossStitchBackbone(init_self=1.0, **kwargs).eval()
    _copy_shared_weights(plain, stitched)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, out = plain(x), stitched(x)
    assert_same_maps(out, expected)

    mixed = CrossStitchBackbone(init_self=0.9, **kwargs)
    sum(f.square().mean() for f in mixed(x)["geometric"]).backward()
    reached = {n for n, p in mixed.named_parameters() if p.grad is not None and p.grad.any()}
    assert any(n.startswith("branches.semantic.") for n in reached)
    assert {n for n, _ in mixed.named_parameters()} == reached
    assert set(mixed.parameter_tasks().values()) == {frozenset(mixed.task_groups)}
    assert [mixed.parameter_stage(f"stitches.{k}.alpha") for k in range(3)] == [1, 2, 3]


def test_orthogonality_penalty_is_the_squared_cross_products_of_the_subspaces() -> None:
    """Ruder et al.'s ``Σ_(s<t) ‖G_sᵀ G_t‖²_F`` with every pixel of the batch a row of ``G``,
    each pair normalised by ``‖G_sᵀ G_s‖_F ‖G_tᵀ G_t‖_F``: here by explicit sums over pixels
    in NCHW; zero for pairs of subspaces that are never non-zero at the same pixel, one pair's
    worth for two subspaces that are multiples of each other, and blind to scale."""
    torch.manual_seed(0)
    kwargs = dict(model_name=CONVNEXT, shared_stages=1, branches=BRANCHES, adapter=None)
    backbone = CrossStitchBackbone(subspaces=4, orthogonality_weight=1.0, **kwargs)

    def by_pixels(y: torch.Tensor, pairs) -> torch.Tensor:
        g = y.split(2, dim=1)

        def cross(s: int, t: int) -> torch.Tensor:
            return torch.einsum("bihw,bjhw->ij", g[s], g[t]).square().sum()

        return sum(cross(s, t) / (cross(s, s) * cross(t, t)).sqrt() for s, t in pairs)

    y = torch.randn(2, 8, 3, 4)
    every_pair = [(s, t) for s in range(4) for t in range(s + 1, 4)]
    torch.testing.assert_close(backbone.orthogonality_penalty(y), by_pixels(y, every_pair))
    backbone.channels_last = True
    nhwc = backbone.orthogonality_penalty(y.permute(0, 2, 3, 1))
    torch.testing.assert_close(nhwc, by_pixels(y, every_pair))
    backbone.channels_last = False
    y[:, :2, :, ::2] = 0  # subspace 0 lives at the odd columns, 1 to 3 at the even ones:
    y[:, 2:, :, 1::2] = 0  # only the pairs among 1, 2 and 3 overlap
    overlapping = by_pixels(y, [(1, 2), (1, 3), (2, 3)])
    assert float(overlapping) > 0
    torch.testing.assert_close(backbone.orthogonality_penalty(y), overlapping)
    torch.testing.assert_close(backbone.orthogonality_penalty(1e3 * y), overlapping)
    twins = torch.randn(1, 4, 3, 4).repeat(1, 2, 1, 1)  # subspaces 2, 3 = 0, 1
    twins[:, 4:] *= -3.0
    two = CrossStitchBackbone(subspaces=2, orthogonality_weight=1.0, **kwargs)
    torch.testing.assert_close(two.orthogonality_penalty(twins), torch.tensor(1.0))


def test_sluice_backbone_regularises_every_branch_output_before_its_stitch() -> None:
    """``forward_with_regularisers`` returns ``forward``'s maps and λ times the penalty of each
    group's branched-stage outputs, as the branches computed them (before mixing)."""
    torch.manual_seed(0)
    kwargs = dict(model_name=CONVNEXT, shared_stages=1, branches=BRANCHES, adapter=None)
    kwargs["model_kwargs"] = LIVE_CONVNEXT
    backbone = CrossStitchBackbone(subspaces=2, orthogonality_weight=0.5, **kwargs)
    outputs: list[torch.Tensor] = []
    for units in backbone.branches.values():
        for unit in units:
            unit.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    x = torch.randn(1, 3, 64, 64)
    maps, regularisers = backbone.forward_with_regularisers(x)
    assert set(regularisers) == {"sluice_orthogonality"} and len(outputs) == 2 * 3
    expected = 0.5 * sum(backbone.orthogonality_penalty(y) for y in outputs)
    torch.testing.assert_close(regularisers["sluice_orthogonality"], expected)
    assert float(expected) > 0
    assert_same_maps(maps, backbone(x))
    regularisers["sluice_orthogonality"].backward()
    assert next(backbone.branches["semantic"][0].parameters()).grad is not None
    plain = CrossStitchBackbone(subspaces=2, **kwargs)
    assert plain.forward_with_regularisers(x)[1] == {}
    with pytest.raises(ValueError, match="subspaces >= 2"):
        CrossStitchBackbone(orthogonality_weight=0.1, **kwargs)


def test_task_attention_applies_its_sigmoid_masks_to_the_shared_maps() -> None:
    """Mask networks whose last norm outputs a constant b give a_s = σ(b) · f_s at every stage,
    whatever the task's previous maps."""
    torch.manual_seed(0)
    attention = TaskAttention([8, 16]).eval()
    shared = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    with torch.no_grad():
        for b, mask in zip((0.0, 2.0), attention.masks, strict=True):
            mask[-1].weight.zero_()
            mask[-1].bias.fill_(b)
        out = attention(shared)
    torch.testing.assert_close(out[0], 0.5 * shared[0])
    torch.testing.assert_close(out[1], torch.sigmoid(torch.tensor(2.0)) * shared[1])
    # the second stage's mask depends on the first stage's attended map
    attention = TaskAttention([8, 16]).eval()
    with torch.no_grad():
        first = attention(shared)[1]
        shared[0].mul_(-1)
        assert not torch.allclose(attention(shared)[1], first)


def test_mtan_shares_every_stage_and_attends_per_group() -> None:
    torch.manual_seed(0)
    backbone = TaskAttentionBackbone(
        model_name=CONVNEXT, branches={t: [t] for t in TASKS}, model_kwargs=LIVE_CONVNEXT
    )
    assert len(backbone.trunk) == 4 and all(len(b) == 0 for b in backbone.branches.values())
    x = torch.randn(1, 3, 64, 64)
    out = backbone(x)
    shapes = [tuple(f.shape) for f in out["det"]]
    assert shapes == [
        (1, c, 64 // s, 64 // s) for c, s in zip(backbone.out_channels, (4, 8, 16, 32), strict=True)
    ]
    out["depth"][3].square().mean().backward()
    reached = {n for n, p in backbone.named_parameters() if p.grad is not None}
    declared = {n for n, t in backbone.parameter_tasks().items() if "depth" in t}
    assert reached == declared
    assert not any(n.startswith("attention.det.") for n in reached)
    with pytest.raises(ValueError, match="shares every stage"):
        TaskAttentionBackbone(model_name=CONVNEXT, shared_stages=2)


def test_task_norms_start_as_the_shared_norm_and_then_belong_to_their_group() -> None:
    torch.manual_seed(0)
    kwargs = dict(
        model_name=CONVNEXT, shared_stages=2, branches=BRANCHES, model_kwargs=LIVE_CONVNEXT
    )
    plain = BranchedBackbone(**kwargs).eval()
    torch.manual_seed(0)  # the copies are made after timm's initialisation: the same weights
    normed = BranchedBackbone(task_norms=True, **kwargs).eval()
    # the copies hold the shared norm's weights, under norms.<group>
    state = plain.state_dict()
    for name, value in normed.state_dict().items():
        source = name.replace(".norms.semantic", "").replace(".norms.geometric", "")
        assert torch.equal(value, state[source]), name
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, out = plain(x), normed(x)
        assert_same_maps(out, expected)
        for task_norm in normed.task_norms:
            task_norm.norms["semantic"].bias.add_(0.5)
        changed = normed(x)
    assert all(
        torch.equal(a, b) for a, b in zip(changed["geometric"], out["geometric"], strict=True)
    )
    assert not torch.allclose(changed["semantic"][0], out["semantic"][0])
    owners = normed.parameter_tasks()
    semantic_norms = [n for n in owners if ".norms.semantic." in n]
    assert semantic_norms and all(owners[n] == {"det", "seg"} for n in semantic_norms)
    with pytest.raises(ValueError, match="task_norms"):
        BranchedBackbone(model_name=CONVNEXT, shared_stages=0, task_norms=True)


def test_hypernetwork_adapters_start_as_identity_and_are_one_network_for_all_groups() -> None:
    torch.manual_seed(0)
    kwargs = dict(
        model_name=CONVNEXT, shared_stages=2, branches=BRANCHES, model_kwargs=LIVE_CONVNEXT
    )
    plain = BranchedBackbone(adapter=None, **kwargs).eval()
    torch.manual_seed(0)  # the hypernetwork is made after timm's initialisation
    hyper = BranchedBackbone(
        adapter=dict(type="hyper", reduction=4, embed_dim=8, hidden=16), **kwargs
    )
    hyper.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, out = plain(x), hyper(x)
    assert_same_maps(out, expected, exact=True)
    # one parameter set, in the backbone, whatever the number of adapted blocks and groups
    names = [n for n, _ in hyper.named_parameters()]
    assert len(names) == len(set(names))
    adapters = {n for n, _ in adapter_parameters(hyper)}
    assert adapters == {n for n in names if n.startswith("hypernetwork.")}
    owners = hyper.parameter_tasks()
    assert owners["hypernetwork.group_embeddings.semantic"] == {"det", "seg"}
    assert owners["hypernetwork.projection.0.weight"] == frozenset(hyper.task_groups)
    # the live generator: a semantic loss reaches the geometric adapters' generator weights
    hyper.train()
    with torch.no_grad():
        for generator in hyper.hypernetwork.up.values():
            generator.weight.normal_(std=0.01)
    sum(f.square().mean() for f in hyper(x)["semantic"]).backward()
    network = hyper.hypernetwork
    assert network.projection[0].weight.grad.any()
    assert network.group_embeddings["semantic"].grad.any()
    assert network.group_embeddings["geometric"].grad is None
    frozen = BranchedBackbone(adapter=dict(type="hyper"), freeze_backbone=True, **kwargs)
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {
        n for n, _ in adapter_parameters(frozen)
    }


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return synthdrive_batch(tmp_path_factory.mktemp("synth"), seed=11)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_traces_its_sharing(architecture: str, batch: dict) -> None:
    """Each architecture's config: the traced parameter→task map is what autograd reaches from
    every task's loss, and the sharing groups follow from it (a cross-stitch unit's parameters
    shared by the tasks it mixes, a hypernetwork's by all). tests/test_configs.py trains each
    config one step with its balancer."""
    torch.manual_seed(0)
    setup_runtime()
    cfg = Config.fromfile(ROOT / f"configs/experiments/architectures/{architecture}.py")
    model = MODELS.build(cfg.model)
    model.init_weights()
    owners = model.parameter_tasks()
    params = dict(model.named_parameters())
    with model.recording_head_inputs():
        losses = model(**model.data_preprocessor(batch, True), mode="loss")
    head_inputs = model.head_inputs
    # the mask-classification pixel decoder's mask features are made from its encoder levels,
    # which are also head inputs: not a cut, so the amortised steps take the group backwards
    assert (head_inputs is None) == (architecture == "multi_decoder")
    for task in TASKS:
        grads = torch.autograd.grad(
            losses[f"loss_{task}"], list(params.values()), retain_graph=True, allow_unused=True
        )
        reached = {n for n, g in zip(params, grads, strict=True) if g is not None}
        claimed = {n for n, t in owners.items() if task in t}
        assert reached == claimed, (task, sorted(reached ^ claimed)[:5])
        # the amortised steps' contract: the loss reaches the shared parameters only through
        # the recorded head inputs (the chain rule from there gives the whole gradient)
        if head_inputs is None:
            continue
        shared = [n for n in claimed if len(owners[n]) > 1]
        xs = [x for x in head_inputs[task] if x.requires_grad]
        hs = torch.autograd.grad(losses[f"loss_{task}"], xs, retain_graph=True, allow_unused=True)
        pairs = [(x, h) for x, h in zip(xs, hs, strict=True) if h is not None]
        via_inputs = torch.autograd.grad(
            [x for x, _ in pairs],
            [params[n] for n in shared],
            grad_outputs=[h for _, h in pairs],
            retain_graph=True,
            allow_unused=True,
        )
        direct = dict(zip(params, grads, strict=True))
        for name, grad in zip(shared, via_inputs, strict=True):
            assert grad is not None, (task, name)
            torch.testing.assert_close(grad, direct[name], rtol=1e-4, atol=1e-7, msg=name)
    layout = SharingLayout.from_model(TASKS, model.named_parameters(), owners)
    groups = {
        g.tasks: {n for n, p in params.items() if any(p is q for q in g.params)}
        for g in layout.groups
    }
    everyone = groups[TASKS]
    expected_shared = {
        "hard_sharing": "backbone.trunk.3.",
        "cross_stitch": "backbone.stitches.3.",
        "sluice": "backbone.branches.geometric.3.",
        "mtan": "backbone.trunk.3.",
        "hyper_adapters": "backbone.hypernetwork.projection.",
        "task_norms": "backbone.trunk.0.",
        "multi_decoder": "necks.all.pixel_decoder.encoder.",
    }[architecture]
    assert any(n.startswith(expected_shared) for n in everyone)
    if architecture == "task_norms":
        assert not any(".norms." in n for n in everyone)
        assert any(".norms.semantic." in n for n in groups[("det", "seg")])
    if architecture == "mtan":
        assert not any(n.startswith("backbone.attention.") for n in everyone)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_parameter_report_counts_every_part_once(architecture: str) -> None:
    """The report the model logs at build: its parts add up to every trainable parameter, and
    the parts a backbone subclass builds after ``BranchedBackbone`` (cross-stitch units,
    attention) have their own lines."""
    setup_runtime()
    cfg = Config.fromfile(ROOT / f"configs/experiments/architectures/{architecture}.py")
    model = MODELS.build(cfg.model)
    counts = model.trainable_parameter_counts()
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    own = {
        "cross_stitch": "backbone.stitches",
        "sluice": "backbone.stitches",
        "mtan": "backbone.attention.det",
        "hyper_adapters": "backbone.adapters.hypernetwork",
    }.get(architecture)
    if own is not None:
        assert counts[own] > 0


@pytest.mark.parametrize("architecture", ["quickstart", "mtan"])
def test_amortised_steps_through_the_head_inputs_match_the_group_backwards(
    architecture: str, batch: dict
) -> None:
    """The full model's amortised step (PCGrad's last per-group weights) from the recorded head
    inputs, each head passed once, gives the update of the group backwards of the re-weighted
    losses: on the quickstart (two groups of two tasks) and on MTAN (a private FPN per task
    between the shared backbone and each head)."""
    path = (
        "configs/quickstart.py"
        if architecture == "quickstart"
        else (f"configs/experiments/architectures/{architecture}.py")
    )
    cfg = Config.fromfile(ROOT / path)
    cfg.model.balancer = dict(type="PCGrad", surgery_interval=2)
    updates = []
    for record in (True, False):
        torch.manual_seed(0)
        setup_runtime()
        model = MODELS.build(cfg.model)
        model.init_weights()
        optim_wrapper = MTLOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=1e-3))
        model.train_step(batch, optim_wrapper)  # a surgery step: the groups' weights
        assert model.balancer.plan(model) == "amortised"
        model(**model.data_preprocessor(batch, True), mode="loss")
        assert model.head_inputs is None  # recorded in training steps only
        if not record:
            model.loss = _forgetting_head_inputs(model.loss, model)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.train_step(batch, optim_wrapper)
        updates.append({n: before[n] - p.detach() for n, p in model.named_parameters()})
    recorded, reference = updates
    # float32 sums of many cancelling terms in another order: measured 1e-6 over the whole
    # update and at most 4e-5 of one parameter's; a wrong path is off by O(1)
    whole = torch.cat([(recorded[n] - v).flatten() for n, v in reference.items()]).norm()
    assert whole <= 1e-5 * torch.cat([v.flatten() for v in reference.values()]).norm()
    for name, expected in reference.items():
        assert (recorded[name] - expected).norm() <= 1e-3 * expected.norm(), name


def _forgetting_head_inputs(loss, model: nn.Module):
    """``model.loss`` that leaves no head inputs: the group backwards' path."""

    def forgetting(*args, **kwargs):
        losses = loss(*args, **kwargs)
        model.head_inputs = None
        return losses

    return forgetting
