"""Inter-task affinity, measured during training, and the task grouping it recommends.

Two affinities, both T×T with row i the task that steps and column j the task affected:

- lookahead (Fifty et al. 2021, TAG): ``Z[i, j] = 1 - L_j(θ - η g_i) / L_j(θ)``: a gradient
  step for task i alone, at each parameter group's current learning rate η, through the
  parameters i shares with other tasks, on the same batch; positive when a step for i lowers
  j's loss. A plain gradient step, also under Adam: Adam's own step on one task's gradient
  moves every coordinate by about η whatever its gradient (on SynthDrive it raised another
  task's loss 2.7-fold, a measure of instability, not of affinity), while η g_i keeps the
  lookahead where it reads as η ⟨g_i, g_j⟩ / L_j, the inner product that matters, scaled by
  what j has left to learn;
- gradient cosine, per backbone stage, which says where in the network the tasks stop agreeing.

``AffinityHook`` logs both through the visualizer (``affinity/lookahead/<i>-><j>``,
``affinity/stage<k>/cos/<a>-<b>``); ``best_groupings`` ranks the partitions of the tasks into at
most a budget of groups by the lookahead affinity each task receives from the tasks of its
group (TAG's criterion); ``branch_point`` picks how many stages those groups should share;
``affinity_series`` reads either affinity back from a run's scalars (``plots.plot_affinity``
draws it over time).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from adperception.models.backbones.branched import STRIDES
from adperception.models.base import loss_probe
from adperception.registry import HOOKS

CONFLICT_COSINE = -0.1
"""The mean gradient cosine below which two tasks conflict at a stage: near-zero cosines are
orthogonal gradients, not a conflict (the escalation's threshold on the cosine magnitude of
conflicting pairs is 0.1 too)."""

if TYPE_CHECKING:  # plots needs matplotlib, which training does not
    from adperception.diagnostics.plots import Series

PROBE_SEED = 20210127
"""The seed of every loss pass of one measurement: the same denoising queries and noise for the
loss before and after each lookahead step."""


def _shared_params(model: nn.Module, task: str) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters ``task`` shares with at least one other task."""
    owners = model.parameter_tasks()
    return [
        (name, p)
        for name, p in model.named_parameters()
        if p.requires_grad and task in owners.get(name, ()) and len(owners[name]) > 1
    ]


def _learning_rate(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> float:
    """The current learning rate of ``param``'s optimizer group (its ``lr_mult`` applied)."""
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return float(group["lr"])
    raise ValueError("a shared parameter is in no optimizer group")


@dataclass
class AffinityMeasurement:
    """One step's affinities; ``stage_cosines[k]`` is the T×T gradient cosine over backbone
    stage k's parameters (NaN for a pair that shares none of them)."""

    tasks: tuple[str, ...]
    lookahead: np.ndarray
    stage_cosines: dict[int, np.ndarray]


def measure_affinity(
    model: nn.Module, data: dict, optimizer: torch.optim.Optimizer
) -> AffinityMeasurement:
    """Lookahead and per-stage cosine affinity of ``model``'s tasks on the batch ``data`` (as a
    dataloader yields it); the model's weights, buffers and random streams are left as they
    were."""
    tasks = tuple(model.tasks)
    backbone = getattr(model, "backbone", None)
    stage_of = getattr(backbone, "parameter_stage", lambda name: None)

    def losses() -> dict[str, Tensor]:
        torch.manual_seed(PROBE_SEED)
        batch = model.data_preprocessor(data, True)
        found = model.loss(batch["inputs"], batch["data_samples"])
        missing = [t for t in tasks if f"loss_{t}" not in found]
        if missing:
            raise ValueError(f"affinity needs every task labelled in the batch; {missing} are not")
        return {t: found[f"loss_{t}"] for t in tasks}

    lookahead = np.zeros((len(tasks), len(tasks)))
    grads: dict[str, dict[str, Tensor]] = {}
    shared = {task: dict(_shared_params(model, task)) for task in tasks}
    with loss_probe(model):
        before = losses()
        base = {t: float(v.detach()) for t, v in before.items()}
        for task in tasks:  # every gradient before any weight moves: the graph needs them
            names = list(shared[task])
            found = torch.autograd.grad(
                before[task], list(shared[task].values()), retain_graph=True, allow_unused=True
            )
            grads[task] = {n: g for n, g in zip(names, found, strict=True) if g is not None}
        del before
        for i, task in enumerate(tasks):
            params = shared[task]
            steps = {n: _learning_rate(optimizer, params[n]) * g for n, g in grads[task].items()}
            with torch.no_grad():
                for name, step in steps.items():
                    params[name].sub_(step)
                try:
                    after = losses()
                finally:
                    for name, step in steps.items():
                        params[name].add_(step)
            for j, other in enumerate(tasks):
                lookahead[i, j] = 1.0 - float(after[other]) / base[other] if base[other] else 0.0
    return AffinityMeasurement(tasks, lookahead, _stage_cosines(tasks, grads, stage_of))


def _stage_cosines(
    tasks: tuple[str, ...], grads: Mapping[str, Mapping[str, Tensor]], stage_of
) -> dict[int, np.ndarray]:
    stage = {n: stage_of(n.removeprefix("backbone.")) for g in grads.values() for n in g}
    result = {}
    for k in sorted({s for s in stage.values() if s is not None}):
        cos = np.full((len(tasks), len(tasks)), np.nan)
        for (i, a), (j, b) in itertools.combinations(enumerate(tasks), 2):
            common = [n for n in grads[a] if n in grads[b] and stage[n] == k]
            if not common:
                continue
            ga = torch.cat([grads[a][n].reshape(-1) for n in common]).double()
            gb = torch.cat([grads[b][n].reshape(-1) for n in common]).double()
            denom = float(ga.norm() * gb.norm())
            cos[i, j] = cos[j, i] = float(ga @ gb) / denom if denom > 0 else 0.0
        result[k] = cos
    return result


@HOOKS.register_module()
class AffinityHook(Hook):
    """Measures inter-task affinity (``measure_affinity``) on the batch of every ``interval``-th
    training iteration, before its step, and logs it through the visualizer at that step:
    ``affinity/lookahead/<i>-><j>`` and ``affinity/stage<k>/cos/<a>-<b>``. Each measurement
    costs one forward and T backward passes plus T forward passes."""

    priority = "LOW"

    def __init__(self, *, interval: int = 25) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.interval = interval

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if runner.iter % self.interval or data_batch is None:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        measured = measure_affinity(model, data_batch, runner.optim_wrapper.optimizer)
        scalars = {}
        for (i, a), (j, b) in itertools.product(enumerate(measured.tasks), repeat=2):
            if i != j:
                scalars[f"affinity/lookahead/{a}->{b}"] = float(measured.lookahead[i, j])
        for stage, cos in measured.stage_cosines.items():
            for (i, a), (j, b) in itertools.combinations(enumerate(measured.tasks), 2):
                if not math.isnan(cos[i, j]):
                    scalars[f"affinity/stage{stage}/cos/{a}-{b}"] = float(cos[i, j])
        runner.visualizer.add_scalars(scalars, step=runner.iter + 1)
        helped = {
            b: float(
                np.mean([measured.lookahead[i, j] for i in range(len(measured.tasks)) if i != j])
            )
            for j, b in enumerate(measured.tasks)
        }
        runner.logger.info(
            f"task affinity at iter {runner.iter + 1}: mean lookahead onto "
            + " ".join(f"{t} {v:+.2e}" for t, v in helped.items())
        )


def affinity_series(
    scalars: Mapping[str, Series], tasks: Sequence[str]
) -> tuple[str, np.ndarray, np.ndarray]:
    """A run's affinity over time: its kind, the measurement steps (S) and the S×T×T matrices.

    The lookahead affinity when the run logged it (``AffinityHook``), else the gradient cosine
    of the diagnostics hook (``diag/<group>/cos/<a>-<b>``, from the largest sharing group that
    holds both tasks). Diagonals are 0, unmeasured pairs NaN."""
    index = {t: k for k, t in enumerate(tasks)}
    entries: list[tuple[int, int, Series]] = []
    if any(k.startswith("affinity/lookahead/") for k in scalars):
        kind = "lookahead"
        for key, series in scalars.items():
            if key.startswith("affinity/lookahead/"):
                a, _, b = key.rpartition("/")[2].partition("->")
                if a in index and b in index:
                    entries.append((index[a], index[b], series))
    else:
        kind = "cosine"
        best: dict[tuple[str, str], tuple[int, Series]] = {}
        for key, series in scalars.items():
            parts = key.split("/")
            if len(parts) == 4 and parts[0] == "diag" and parts[2] == "cos":
                a, _, b = parts[3].partition("-")
                size = len(parts[1].split("+"))
                if a in index and b in index and size > best.get((a, b), (0, None))[0]:
                    best[(a, b)] = (size, series)
        for (a, b), (_, series) in best.items():
            entries += [(index[a], index[b], series), (index[b], index[a], series)]
    if not entries:
        raise ValueError(
            "the run logged no task affinity: train it with AffinityHook or "
            "GradientDiagnosticsHook in custom_hooks"
        )
    steps = np.array(sorted({step for *_, s in entries for step in s.steps}))
    matrices = np.full((len(steps), len(tasks), len(tasks)), np.nan)
    for i, j, series in entries:
        matrices[np.searchsorted(steps, series.steps), i, j] = series.values
    matrices[:, np.arange(len(tasks)), np.arange(len(tasks))] = 0.0
    return kind, steps, matrices


def late_mean(steps: np.ndarray, matrices: np.ndarray, *, since: float = 0.5) -> np.ndarray:
    """The mean of the matrices measured at steps ≥ ``since`` × the last step: the affinity of
    the later part of the run, past the first steps' transient."""
    keep = steps >= since * steps.max()
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pair never measured stays NaN
        return np.nanmean(matrices[keep], axis=0)


def partitions(items: Sequence[str]) -> Iterator[list[tuple[str, ...]]]:
    """Every partition of ``items`` into non-empty groups, each group in ``items`` order."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in partitions(rest):
        yield [(first,), *partition]
        for k, group in enumerate(partition):
            yield [*partition[:k], (first, *group), *partition[k + 1 :]]


def grouping_score(
    matrix: np.ndarray, tasks: Sequence[str], groups: Sequence[Sequence[str]]
) -> float:
    """TAG's criterion: the sum over tasks j of the mean affinity onto j from the other tasks of
    j's group (0 for a task alone). Unmeasured pairs (NaN) count as 0."""
    index = {t: k for k, t in enumerate(tasks)}
    total = 0.0
    for group in groups:
        for b in group:
            onto = [matrix[index[a], index[b]] for a in group if a != b]
            total += float(np.nanmean(onto)) if onto and not np.isnan(onto).all() else 0.0
    return total


def best_groupings(
    matrix: np.ndarray, tasks: Sequence[str], *, max_groups: int
) -> list[tuple[list[tuple[str, ...]], float]]:
    """Every partition of ``tasks`` into at most ``max_groups`` groups with its
    ``grouping_score``, best first (ties: fewer groups first)."""
    if max_groups < 1:
        raise ValueError(f"the budget must be at least one group, got {max_groups}")
    ranked = [
        (groups, grouping_score(matrix, tasks, groups))
        for groups in partitions(list(tasks))
        if len(groups) <= max_groups
    ]
    ranked.sort(key=lambda item: (-item[1], len(item[0]), item[0]))
    return ranked


def stage_cosines(
    scalars: Mapping[str, Series], *, since: float = 0.5
) -> dict[int, dict[tuple[str, str], float]]:
    """Stage k → {(a, b): the mean gradient cosine over stage k's parameters at the steps ≥
    ``since`` × the last step (``AffinityHook``'s ``affinity/stage<k>/cos/<a>-<b>``)."""
    result: dict[int, dict[tuple[str, str], float]] = {}
    for key, series in scalars.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == "affinity" and parts[1].startswith("stage"):
            a, _, b = parts[3].partition("-")
            steps = np.asarray(series.steps, dtype=float)
            keep = steps >= since * steps.max()
            mean = float(np.asarray(series.values)[keep].mean())
            result.setdefault(int(parts[1][len("stage") :]), {})[(a, b)] = mean
    return dict(sorted(result.items()))


def branch_point(
    cosines: Mapping[int, Mapping[tuple[str, str], float]],
    groups: Sequence[Sequence[str]],
    *,
    threshold: float = CONFLICT_COSINE,
) -> tuple[int | None, list[str]]:
    """How many leading stages ``groups`` should share: the stages before the first one where
    some pair of tasks in different groups has a mean gradient cosine below ``threshold`` (they
    conflict there), or before the first stage no pair across the groups shared in the run
    (unmeasured: nothing said beyond it). One group shares every stage; None when stage 0
    was not measured across the groups. Also the reasons, one line per stage looked at."""
    if len(groups) == 1:
        return len(STRIDES), ["one group: every stage shared"]
    if not cosines:
        return None, ["the run logged no per-stage gradient cosines (AffinityHook logs them)"]
    group_of = {t: g for g, members in enumerate(groups) for t in members}
    reasons = []
    for stage in range(len(STRIDES)):
        across = {
            pair: c
            for pair, c in cosines.get(stage, {}).items()
            if {*pair} <= group_of.keys() and group_of[pair[0]] != group_of[pair[1]]
        }
        if not across:
            reasons.append(
                f"stage {stage}: no two tasks of different groups shared it in this run, so "
                "nothing says whether they should; measure on a run that shares it"
            )
            return (stage or None), reasons
        (a, b), worst = min(across.items(), key=lambda item: item[1])
        if worst < threshold:
            reasons.append(
                f"stage {stage}: {a} and {b} conflict there (mean cosine {worst:+.3f} < "
                f"{threshold:+.2f}): branch before it"
            )
            return stage, reasons
        reasons.append(
            f"stage {stage}: lowest mean cosine across groups {worst:+.3f} ({a}-{b}): share"
        )
    return len(STRIDES), reasons
