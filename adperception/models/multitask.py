"""The multi-task model: one backbone whose later stages branch per task group, one FPN neck per
group, one head per task. Data flows backbone → branches → necks → heads → per-task losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.logging import MMLogger, print_log
from mmengine.model import ModuleDict
from torch import Tensor, nn

from adperception.balancing import REGULARISER_PREFIX
from adperception.data.structures import MTLDataSample
from adperception.models.base import MultiTaskBaseModel
from adperception.registry import MODELS
from adperception.tasks.base import get_task, task_names, tasks_in_order


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def computed_apart(tensors: Sequence[Tensor]) -> bool:
    """Whether none of ``tensors`` is computed from another: the autograd graph above each
    holds none of the others' nodes (a conservative test: two outputs of one operation above
    a third count as related). Then the gradient of a loss at each of them is a partial
    derivative, and backpropagating those from all of them together counts every path once;
    an FPN's outputs pass, a pixel decoder's mask features made from its encoder's levels
    beside those levels do not."""
    nodes = [t.grad_fn for t in tensors if t.grad_fn is not None]
    for i, node in enumerate(nodes):
        others = set(nodes[:i] + nodes[i + 1 :]) - {node}
        seen, stack = set(), [n for n, _ in node.next_functions]
        while stack:
            above = stack.pop()
            if above is None or above in seen:
                continue
            if above in others:
                return False
            seen.add(above)
            stack.extend(n for n, _ in above.next_functions)
    return True


def head_config(task: str, cfg: dict) -> dict:
    """``cfg`` over the task's ``default_head`` when it names no ``type`` (``heads=dict(
    lanes=dict(channels=64))`` is the default lane head, narrower)."""
    if "type" in cfg:
        return cfg
    default = get_task(task).default_head
    if default is None:
        raise ValueError(f"model.heads.{task}: no type given, and '{task}' has no default head")
    return {**default, **cfg}


@MODELS.register_module()
class MultiTaskModel(MultiTaskBaseModel):
    """Every task of ``heads`` (detection, segmentation, depth, normals, ...) from one partially
    shared network.

    Args:
        backbone: a ``BranchedBackbone`` config; its ``branches`` decide which tasks share which
            later stages, and so which neck feeds which head.
        neck: one neck config (``in_channels`` is filled from the backbone), built per group.
        group_necks: per group, keys that override ``neck`` for that group's neck, e.g.
            ``dict(det=dict(start_level=1, num_outs=3))`` for a group of detection alone,
            whose DETR reads the stride-8 to 32 maps only (a stride-4 level would never train).
        heads: ``{task: head config}`` for the tasks to train, each a registered task
            (``adperception.tasks``); they are kept in registration order.
        balancer: how the task losses are balanced (``adperception.balancing``); the default
            is FAMO's loss weighting escalating to PCGrad.
        data_preprocessor: normalises and pads the batch (mmdet's ``DetDataPreprocessor``).

    ``loss`` returns ``loss_<task>`` for every task (a head's terms summed) and each term,
    detached, as ``<task>.<term>`` for the log; ``predict`` fills every ``pred_*`` field.
    A head reads its group's neck outputs and nothing else of the network: in a training step
    ``loss`` records them as ``head_inputs`` when none of them is computed from another
    (``computed_apart``, tested once), for the balancer's amortised steps.
    """

    _independent_head_inputs: bool | None = None  # decided at the first loss with gradients

    def __init__(
        self,
        *,
        backbone: dict,
        neck: dict,
        heads: dict[str, dict],
        group_necks: dict[str, dict] | None = None,
        balancer: dict | None = None,
        data_preprocessor: dict | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        unknown = sorted(set(heads) - set(task_names()))
        if unknown:
            raise ValueError(
                f"model.heads: unknown task(s) {unknown}; known tasks are {task_names()}"
            )
        self.backbone = MODELS.build(backbone)
        self.tasks = tasks_in_order(heads)
        without_branch = [t for t in self.tasks if t not in self.backbone.task_groups]
        if without_branch:
            raise ValueError(
                f"model.heads: task(s) {without_branch} are in no group of "
                f"model.backbone.branches (task → group: {self.backbone.task_groups})"
            )
        self.task_groups = {task: self.backbone.task_groups[task] for task in self.tasks}
        groups = sorted(set(self.task_groups.values()))
        group_necks = dict(group_necks or {})
        unknown = sorted(set(group_necks) - set(groups))
        if unknown:
            raise ValueError(
                f"model.group_necks: {unknown} are not groups; the groups are {groups}"
            )
        neck_cfg = {**neck, "in_channels": list(self.backbone.out_channels)}
        self.necks = ModuleDict(
            {group: MODELS.build({**neck_cfg, **group_necks.get(group, {})}) for group in groups}
        )
        self.heads = ModuleDict(
            {task: MODELS.build(head_config(task, heads[task])) for task in self.tasks}
        )
        for task, head in self.heads.items():
            if head.task != task:
                raise ValueError(f"model.heads.{task}: a '{head.task}' head cannot serve '{task}'")
        self.init_balancer(balancer)
        self._report_parameters()

    def trainable_parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part (the backbone's parts, each neck, each head, the
        balancer's own, such as uncertainty weighting's log-variances): they sum to the model's."""
        counts = {f"backbone.{k}": v for k, v in self.backbone.trainable_parameter_counts().items()}
        counts.update({f"neck.{g}": _count(m) for g, m in self.necks.items()})
        counts.update({f"head.{t}": _count(m) for t, m in self.heads.items()})
        balancer = _count(self.balancer)
        if balancer:
            counts["balancer"] = balancer
        return counts

    def _report_parameters(self) -> None:
        counts = self.trainable_parameter_counts()
        lines = "\n".join(f"  {name:<28} {n / 1e6:8.3f} M" for name, n in counts.items())
        print_log(
            f"trainable parameters ({_count(self) / 1e6:.3f} M in all):\n{lines}",
            logger=MMLogger.get_current_instance(),
        )

    def forward(
        self,
        inputs: Tensor,
        data_samples: Sequence[MTLDataSample] | None = None,
        mode: str = "tensor",
    ):
        """mmengine's three modes: ``loss``, ``predict`` and ``tensor`` (raw head outputs)."""
        if mode == "loss":
            return self.loss(inputs, data_samples)
        if mode == "predict":
            return self.predict(inputs, data_samples)
        if mode == "tensor":
            return self._forward(inputs, data_samples)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', not {mode!r}")

    def extract_feat(self, inputs: Tensor) -> dict[str, list[Tensor]]:
        """Neck outputs per task group: 4 maps at strides 4, 8, 16, 32."""
        return self._necked(self.backbone(inputs))

    def _necked(self, branches: dict[str, list[Tensor]]) -> dict[str, list[Tensor]]:
        return {group: list(neck(tuple(branches[group]))) for group, neck in self.necks.items()}

    def labelled_tasks(self, data: dict) -> list[str]:
        """The tasks with a target in at least one sample of the batch (partial labels: a
        sample lacks the field of a task its dataset or its own annotation lacks)."""
        samples = data.get("data_samples") or []
        return [t for t in self.tasks if any(get_task(t).gt_field in s for s in samples)]

    def loss(self, inputs: Tensor, data_samples: Sequence[MTLDataSample]) -> dict[str, Tensor]:
        """Per-task losses of the tasks labelled in the batch; a task no sample is labelled for
        has no entry (it contributes nothing, see ``GradientBalancer.train_step``). Dense losses
        average over the labelled pixels, so unlabelled samples count for nothing; the
        detection loss runs on the labelled samples alone. The backbone's regularisers come
        as ``reg_<name>``, which the balancer adds at weight 1."""
        branches, regularisers = self.backbone.forward_with_regularisers(inputs)
        feats = self._necked(branches)
        losses = {f"{REGULARISER_PREFIX}{name}": v for name, v in regularisers.items()}
        labelled = self.labelled_tasks({"data_samples": data_samples})
        if self.records_head_inputs and torch.is_grad_enabled():
            if self._independent_head_inputs is None:
                self._independent_head_inputs = all(map(computed_apart, feats.values()))
            if self._independent_head_inputs:
                self.head_inputs = {t: tuple(feats[self.task_groups[t]]) for t in labelled}
        for task, head in self.heads.items():
            if task not in labelled:
                continue
            terms = head.loss(feats[self.task_groups[task]], data_samples)
            losses[f"loss_{task}"] = torch.stack([v.sum() for v in terms.values()]).sum()
            if len(terms) > 1:  # detached, and named without "loss" so mmengine does not add them
                for name, value in terms.items():
                    losses[f"{task}.{name.replace('loss_', '')}"] = value.detach()
        return losses

    def predict(
        self, inputs: Tensor, data_samples: Sequence[MTLDataSample]
    ) -> Sequence[MTLDataSample]:
        feats = self.extract_feat(inputs)
        for task, head in self.heads.items():
            head.predict(feats[self.task_groups[task]], data_samples)
        return data_samples

    def _forward(
        self, inputs: Tensor, data_samples: Sequence[MTLDataSample] | None = None
    ) -> dict[str, Tensor | tuple[Tensor, ...]]:
        feats = self.extract_feat(inputs)
        return {task: head(feats[self.task_groups[task]]) for task, head in self.heads.items()}

    @torch.no_grad()
    def probe_batch(self) -> tuple[Tensor, list[MTLDataSample]]:
        size = 256  # enough stride-8 tokens for two-stage decoders' top-k (DINO: 300 queries)
        device = next(self.parameters()).device
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(2, 3, size, size, generator=generator).to(device)
        samples = []
        for _ in range(2):
            meta = dict(
                img_shape=(size, size),
                batch_input_shape=(size, size),
                pad_shape=(size, size),
                ori_shape=(size, size),
                scale_factor=(1.0, 1.0),
            )
            sample = MTLDataSample(metainfo=meta)
            for task in map(get_task, self.tasks):
                setattr(sample, task.gt_field, task.probe_target(size, device))
            samples.append(sample)
        return inputs, samples

    def frozen_parameter_tasks(self) -> dict[str, set[str]]:
        """Frozen backbone parameters keep the backbone's declared task map."""
        declared = self.backbone.parameter_tasks()
        return {
            name: set(declared[name[len("backbone.") :]]) & set(self.tasks)
            for name, param in self.named_parameters()
            if not param.requires_grad and name.startswith("backbone.")
        }
