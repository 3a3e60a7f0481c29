"""Pictures of a training run from mmengine's scalar log (``<work_dir>/<timestamp>/vis_data/
scalars.json``, one JSON object per line with its ``step``): the per-task losses and weights of the
training log, and the ``diag/...`` scalars of ``GradientDiagnosticsHook``.

Matplotlib's object API (``Figure``) draws with Agg without touching pyplot's global state.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from adperception.balancing.escalation import SYMPTOMS
from adperception.diagnostics.affinity import late_mean

#: mmengine's run folders: ``%Y%m%d_%H%M%S``, which sorts by time.
RUN_DIR = re.compile(r"\d{8}_\d{6}")


@dataclass
class Series:
    """One scalar's values at the steps (1-based iterations) it was logged."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def read_scalars(path: str | Path) -> dict[str, Series]:
    """Every numeric key of a ``scalars.json`` as a series, keys in order of first appearance.

    mmengine ends every record with a newline, so a last line without one is a record cut short
    (the run was killed while writing it) and is left out."""
    scalars: dict[str, Series] = {}
    text = Path(path).read_text()
    lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
    for line in lines:
        if not line.strip():
            continue
        record = json.loads(line)
        step = int(record.pop("step"))
        for key, value in record.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                series = scalars.setdefault(key, Series())
                series.steps.append(step)
                series.values.append(float(value))
    return scalars


def find_scalars(work_dir: str | Path) -> Path:
    """The ``scalars.json`` of the newest run under ``work_dir`` that trained (has a ``loss``):
    a later ``tools/test.py`` run in the same work dir logs metrics only."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        raise FileNotFoundError(f"{work_dir} is not a directory")
    runs = sorted((p for p in work_dir.iterdir() if RUN_DIR.fullmatch(p.name)), reverse=True)
    files = [run / "vis_data" / "scalars.json" for run in runs]
    files = [f for f in files if f.is_file()]
    if not files:
        raise FileNotFoundError(
            f"no mmengine logs in {work_dir}: expected {work_dir}/<timestamp>/vis_data/scalars.json"
            " (written by the LocalVisBackend of the config's visualizer)"
        )
    for path in files:
        if "loss" in read_scalars(path):
            return path
    raise ValueError(
        f"no training losses in {', '.join(map(str, files))}: these runs only evaluated"
    )


def with_prefix(scalars: dict[str, Series], prefix: str) -> dict[str, Series]:
    """The series under ``prefix`` (one level deep), keyed by the rest of their name:
    ``with_prefix(s, "diag/det+seg/cos/")`` -> ``{"det-seg": ...}``."""
    return {
        key[len(prefix) :]: series
        for key, series in scalars.items()
        if key.startswith(prefix) and "/" not in key[len(prefix) :]
    }


def diagnostic_groups(scalars: dict[str, Series]) -> list[str]:
    """The sharing groups (``det+seg``) that ``GradientDiagnosticsHook`` logged."""
    return [
        key.split("/")[1]
        for key in scalars
        if key.startswith("diag/") and key.endswith("/conflict_rate")
    ]


@dataclass(frozen=True)
class Switch:
    """An escalation remedy switched on at ``step`` (the iteration its log line names)."""

    step: int
    symptom: str
    remedy: str


def escalation_switches(scalars: dict[str, Series]) -> list[Switch]:
    """The first measurement of each symptom whose ``diag/escalation/<symptom>_on`` is 1, in
    the order they happened; none when the run did not escalate or did not log it."""
    switches = []
    for symptom, (remedy, _) in SYMPTOMS.items():
        series = scalars.get(f"diag/escalation/{symptom}_on")
        if series is not None:
            on = [step for step, value in zip(series.steps, series.values, strict=True) if value]
            if on:
                switches.append(Switch(on[0], symptom, remedy))
    return sorted(switches, key=lambda switch: switch.step)


def write_plots(scalars: dict[str, Series], out_dir: str | Path) -> tuple[list[Path], list[str]]:
    """Draws ``losses.png``, ``weights.png``, ``grad_norms.png``, ``cosine.png``,
    ``conflict.png`` and, for the escalation, ``escalation.png`` into ``out_dir``, with the
    escalation's switches marked on every picture over iterations; returns the files written
    and why any were not."""
    losses = with_prefix(scalars, "loss_")
    if not losses:
        raise ValueError("no per-task losses (loss_<task>) in the log")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = {task: f"C{i}" for i, task in enumerate(losses)}
    switches = escalation_switches(scalars)
    written, skipped = [_plot_losses(losses, colors, switches, out_dir / "losses.png")], []
    weights = with_prefix(scalars, "weight_") or with_prefix(scalars, "diag/weight/")
    if weights:
        written.append(_plot_weights(weights, colors, switches, out_dir / "weights.png"))
    else:
        skipped.append("weights.png: no task weights (weight_<task> or diag/weight/<task>)")
    groups = diagnostic_groups(scalars)
    if not groups:
        skipped.append(
            "grad_norms.png, cosine.png, conflict.png: no diag/ scalars in the log "
            "(add GradientDiagnosticsHook to custom_hooks)"
        )
        return written, skipped
    written.append(_plot_grad_norms(scalars, groups, colors, switches, out_dir / "grad_norms.png"))
    written.append(_plot_cosine(scalars, groups, out_dir / "cosine.png"))
    written.append(_plot_conflict(scalars, groups, switches, out_dir / "conflict.png"))
    if any(f"diag/escalation/{symptom}" in scalars for symptom in SYMPTOMS):
        written.append(_plot_escalation(scalars, switches, out_dir / "escalation.png"))
    return written, skipped


def _lines(
    ax: Axes, series: dict[str, Series], colors: dict[str, str], suffix: str = "", **style
) -> None:
    for name, s in series.items():
        ax.plot(s.steps, s.values, color=colors.get(name), label=name + suffix, **style)


def _mark_switches(ax: Axes, switches: Sequence[Switch]) -> None:
    """A dotted vertical line at each escalation switch, labelled with its remedy."""
    for number, switch in enumerate(switches):
        ax.axvline(switch.step, color="0.3", linestyle=":", linewidth=1.2)
        ax.annotate(
            f"{switch.remedy} from {switch.step}",
            xy=(switch.step, 1 - 0.07 * number),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            fontsize="x-small",
            color="0.3",
            va="top",
        )


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def _plot_losses(
    losses: dict[str, Series], colors: dict[str, str], switches: list[Switch], path: Path
) -> Path:
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    _lines(ax, losses, colors)
    _mark_switches(ax, switches)
    ax.set(yscale="log", xlabel="iteration", ylabel="loss (log)", title="per-task training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _plot_weights(
    weights: dict[str, Series], colors: dict[str, str], switches: list[Switch], path: Path
) -> Path:
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    _lines(ax, weights, colors)
    _mark_switches(ax, switches)
    ax.set(xlabel="iteration", ylabel="loss weight", title="task loss weights")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _plot_grad_norms(
    scalars: dict[str, Series],
    groups: list[str],
    colors: dict[str, str],
    switches: list[Switch],
    path: Path,
) -> Path:
    fig = Figure(figsize=(5 * len(groups) + 1, 4.5), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False, sharex=True)[0]
    for ax, group in zip(axes, groups, strict=True):
        _lines(ax, with_prefix(scalars, f"diag/{group}/grad_norm/"), colors, marker=".")
        weighted = with_prefix(scalars, f"diag/{group}/weighted_grad_norm/")
        _lines(ax, weighted, colors, " (weighted)", linestyle="--", alpha=0.7)
        _mark_switches(ax, switches)
        ax.set(yscale="log", xlabel="iteration", title=group)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("gradient norm on shared parameters (log)")
    return _save(fig, path)


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges halfway between measurement steps, so cells span the time they stand for."""
    if len(steps) == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[2 * steps[0] - mid[0]], mid, [2 * steps[-1] - mid[-1]]])


def _plot_cosine(scalars: dict[str, Series], groups: list[str], path: Path) -> Path:
    pairs = {group: with_prefix(scalars, f"diag/{group}/cos/") for group in groups}
    heights = [max(len(p), 1) + 1 for p in pairs.values()]
    fig = Figure(figsize=(9, 0.45 * sum(heights) + 1.2), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False, sharex=True, height_ratios=heights)[:, 0]
    mesh = None
    for ax, (group, series) in zip(axes, pairs.items(), strict=True):
        steps = np.array(sorted({step for s in series.values() for step in s.steps}), dtype=float)
        grid = np.full((len(series), len(steps)), np.nan)
        for row, s in enumerate(series.values()):
            grid[row, np.searchsorted(steps, s.steps)] = s.values
        mesh = ax.pcolormesh(
            _edges(steps),
            np.arange(len(series) + 1),
            np.ma.masked_invalid(grid),
            cmap="RdBu",
            vmin=-1,
            vmax=1,
        )
        ax.set_yticks(np.arange(len(series)) + 0.5, list(series))
        ax.invert_yaxis()
        ax.set_title(f"{group}: gradient cosine per task pair")
    axes[-1].set_xlabel("iteration (measurement)")
    fig.colorbar(mesh, ax=list(axes), label="cosine (red: conflict)")
    return _save(fig, path)


def _plot_conflict(
    scalars: dict[str, Series], groups: list[str], switches: list[Switch], path: Path
) -> Path:
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    colors = {group: f"C{i}" for i, group in enumerate(groups)}
    for ax, metric, title in (
        (axes[0], "conflict_rate", "conflict rate (pairs with negative cosine)"),
        (axes[1], "sign_flip_rate", "sign-flip rate of the shared update"),
    ):
        series = {g: scalars[key] for g in groups if (key := f"diag/{g}/{metric}") in scalars}
        _lines(ax, series, colors, marker=".")
        _mark_switches(ax, switches)
        ax.set(xlabel="iteration", title=title, ylim=(-0.03, 1.03))
        ax.grid(True, alpha=0.3)
        if series:
            ax.legend(fontsize="small")
    return _save(fig, path)


def _plot_escalation(scalars: dict[str, Series], switches: list[Switch], path: Path) -> Path:
    """Per symptom: the worst group's measured value, its moving average and the threshold
    the average must stay above (for the patience) to switch the remedy on."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, len(SYMPTOMS), sharex=True, squeeze=False)[0]
    for ax, (symptom, (remedy, measures)) in zip(axes, SYMPTOMS.items(), strict=True):
        key = f"diag/escalation/{symptom}"
        if key in scalars:
            ax.plot(scalars[key].steps, scalars[key].values, ".", color="C0", label="measured")
        if key + "_average" in scalars:
            average = scalars[key + "_average"]
            ax.plot(average.steps, average.values, color="C1", label="moving average")
        if key + "_threshold" in scalars:
            threshold = scalars[key + "_threshold"].values[-1]
            ax.axhline(threshold, color="C3", linestyle="--", label=f"threshold {threshold:g}")
        _mark_switches(ax, [s for s in switches if s.symptom == symptom])
        ax.set(xlabel="iteration", title=f"{measures}\n→ {remedy}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="center right")
    fig.suptitle("escalation: the worst sharing group's signals")
    return _save(fig, path)


def plot_metric_curves(
    runs: dict[str, dict[str, Series]], metrics: list[str], path: str | Path
) -> Path:
    """One panel per validation metric (three to a row), one line per run (metric against
    iteration): the picture that compares training recipes at equal steps. Runs that never
    logged a metric are left out of its panel; a metric no run logged is an error."""
    missing = [m for m in metrics if not any(m in scalars for scalars in runs.values())]
    if missing:
        raise ValueError(f"no run logged {missing}")
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    fig = Figure(figsize=(5 * columns, 4 * rows), layout="constrained")
    for index, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, columns, index + 1)
        for number, (label, scalars) in enumerate(runs.items()):
            if metric in scalars:
                series = scalars[metric]
                ax.plot(series.steps, series.values, marker="o", color=f"C{number}", label=label)
        ax.set(xlabel="iteration", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        if index == 0:  # one legend: every panel colours the runs alike
            ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)


def plot_affinity(
    kind: str,
    steps: np.ndarray,
    matrices: np.ndarray,
    tasks: Sequence[str],
    path: Path,
    *,
    snapshots: int = 5,
) -> Path:
    """The T×T affinity at up to ``snapshots`` measurement steps spread over the run, and its
    late mean, as heat maps (row: the task that steps; column: the task affected)."""
    picks = sorted(
        {int(round(k)) for k in np.linspace(0, len(steps) - 1, min(snapshots, len(steps)))}
    )
    panels = [(f"iter {steps[k]}", matrices[k]) for k in picks]
    panels.append(("late mean", late_mean(steps, matrices)))
    limit = float(np.nanmax(np.abs(np.stack([m for _, m in panels])))) or 1.0
    fig = Figure(figsize=(2.6 * len(panels) + 1, 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    mesh = None
    for ax, (title, matrix) in zip(axes, panels, strict=True):
        mesh = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(tasks)), tasks, rotation=45)
        ax.set_yticks(range(len(tasks)), tasks if ax is axes[0] else [])
        ax.set_title(title)
    axes[0].set_ylabel("step on task")
    label = (
        "lookahead 1 - L_j(after)/L_j (blue: helps)" if kind == "lookahead" else "gradient cosine"
    )
    fig.colorbar(mesh, ax=list(axes), label=label)
    fig.suptitle(f"task affinity ({kind}): row's step onto column's loss")
    fig.savefig(path, dpi=100)
    return path


def plot_task_deltas(deltas: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path) -> Path:
    """One row per joint run: each task's term of Δm in % (``delta_m.task_deltas``: the bar is
    the mean over seeds, the whisker the sample std) and Δm itself (the diamond), so that one
    sees which task a run's Δm comes from, and where the bars cross zero."""
    names = list(deltas)
    tasks = list(next(iter(deltas.values()))[0])
    height = 0.8 / len(tasks)
    fig = Figure(figsize=(8, 1.2 + 0.22 * len(names) * len(tasks)), layout="constrained")
    ax = fig.add_subplot()
    for index, task in enumerate(tasks):
        values = [np.array([seed[task] for seed in deltas[n]]) for n in names]
        offsets = np.arange(len(names)) - 0.4 + height * (index + 0.5)
        ax.barh(
            offsets,
            [v.mean() for v in values],
            height=height,
            xerr=[v.std(ddof=1) if v.size > 1 else 0.0 for v in values],
            color=f"C{index}",
            error_kw=dict(lw=0.8, capsize=2),
            label=f"Δ {task}",
        )
    means = [np.mean([sum(seed.values()) / len(seed) for seed in deltas[n]]) for n in names]
    ax.scatter(means, np.arange(len(names)), marker="D", color="black", zorder=3, label="Δm")
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()  # the report's order, top to bottom
    ax.set_xlabel("relative to the single-task run (%), positive: better together")
    ax.grid(axis="x", alpha=0.3)
    # below the axes: inside, it covers a row's bars whatever the corner
    fig.legend(loc="outside lower center", ncols=len(tasks) + 1, fontsize="small")
    fig.suptitle("Δm and each task's term of it")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)
