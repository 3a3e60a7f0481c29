"""Δm sweeps (``tools/run_delta_m.py``): the same network trained once per task and jointly under
a list of balancers, at the same budget and data, over seeds; every run tested; one Markdown
table of each task's primary metrics, Δm against the single-task runs, parameters and seconds
per iteration.

Δm (Maninis et al. 2019) of a joint model against the single-task ones, in %:

    Δm = (1/T) Σ_k (1/|M_k|) Σ_{m ∈ M_k} (−1)^{l_m} (M_mtl,m − M_stl,m) / M_stl,m · 100

with ``l_m = 1`` where lower is better, so that a positive Δm means the joint model is better
(the Nash-MTL and FAMO papers print the negative). A sweep is resumable at two levels: a
finished run leaves its result (``<results>/<kind>/<name>/seed<k>.json``, beside the report so
that it can be committed with it, and a sweep can span sessions and machines) and is not
trained again; an unfinished one resumes from its last checkpoint in the work dir, bit for bit.
Every result records its provenance (fingerprints of the package's sources, of the run's config
and of the data files): a sweep that spans sessions can mix runs of different code or data, which
moves the single-task references by more than the methods differ (measured on SynthDrive: the
det reference 14.2 → 11.8 mAP_50 after a code and data change; float sums in another order,
from other code or another thread count, diverge over a run), so Δm compares a joint run only
with single-task runs of the same seed, code and data, and the report names any mixture.

A sweep config (``configs/experiments/delta_m_*.py``) names the joint config, the budget, the
seeds, each task's metrics with their direction, and the balancers; optionally, other networks
for the same tasks (``networks``: name → config file, each trained with its own config's
balancer), compared with the same single-task runs of the joint config's network:

    joint = "configs/quickstart.py"
    iters = 500
    seeds = 3
    metrics = dict(det={"det/mAP_50": +1}, depth={"depth/abs_rel": -1}, ...)
    methods = dict(EqualWeighting=dict(type="EqualWeighting"), ...)
    networks = dict(mtan="configs/experiments/architectures/mtan.py", ...)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config
from mmengine.model import is_model_wrapper
from tqdm import tqdm

import adperception
from adperception.diagnostics.plots import plot_task_deltas
from adperception.engine.experiment import train_then_test
from adperception.engine.runner import setup_runtime

#: The balancer of every single-task run: one task has nothing to balance.
SINGLE_TASK_BALANCER = dict(type="EqualWeighting")


@dataclass
class RunResult:
    """One finished run: ``name`` is a task (single-task run) or a method (joint run)."""

    name: str
    single_task: bool
    seed: int
    metrics: dict[str, float]
    params: int  # trainable parameters, balancer excluded
    step_s: float  # median seconds per training iteration
    # {"code", "config", "data"} fingerprints (``provenance``); empty in results made before
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> tuple[str, str]:
        """(code, data): what must match between a joint run and its single-task references."""
        return self.provenance.get("code", "unrecorded"), self.provenance.get("data", "unrecorded")


#: Config keys that name a run's place, not what it trains.
_PLACE_KEYS = ("work_dir", "experiment_name", "visualizer", "resume", "load_from", "log_level")


def _digest(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:12]


def source_fingerprint() -> str:
    """The package's Python sources (relative paths and contents), this module's aside: equal
    when two runs trained the same code, whether from a git checkout or an installed wheel."""
    root = Path(adperception.__file__).parent
    parts = []
    for path in sorted(root.rglob("*.py")):
        if path == Path(__file__):
            continue  # this module only schedules and reports runs: editing it changes none
        parts += [path.relative_to(root).as_posix().encode(), path.read_bytes()]
    return _digest(parts)


def config_fingerprint(cfg: Config) -> str:
    """The run's resolved config without the keys that only say where it runs."""
    body = {k: v for k, v in cfg.to_dict().items() if k not in _PLACE_KEYS}
    return _digest([json.dumps(body, sort_keys=True, default=repr).encode()])


def data_roots(cfg: Config) -> list[str]:
    """The ``data_root`` of every dataset the dataloaders read (through wrappers' ``dataset``
    and ``datasets``)."""
    roots: list[str] = []

    def visit(dataset) -> None:
        if not isinstance(dataset, Mapping):
            return
        if dataset.get("data_root") and str(dataset["data_root"]) not in roots:
            roots.append(str(dataset["data_root"]))
        visit(dataset.get("dataset"))
        for child in dataset.get("datasets") or ():
            visit(child)

    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        visit(cfg.get(key, {}).get("dataset"))
    return roots


def data_fingerprint(roots: Sequence[str | os.PathLike]) -> str:
    """Every file under the data roots, by relative path and size: cheap on Cityscapes' 25k
    files, and a regenerated or edited dataset changes it (PNG sizes follow their contents)."""
    parts = []
    for root in map(Path, roots):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        parts += [f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}".encode() for p in files]
    return _digest(parts)


def source_commit() -> str | None:
    """The git commit of the package's checkout, with ``+changes`` when its sources differ from
    it; None outside a git checkout. Where to check out to resume a sweep with the same code."""
    package = Path(adperception.__file__).parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=package,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if changed else "")


def provenance(cfg: Config) -> dict[str, str]:
    return {
        "code": source_fingerprint(),
        "config": config_fingerprint(cfg),
        "data": data_fingerprint(data_roots(cfg)),
        "commit": source_commit() or "unknown",
        "torch_threads": str(torch.get_num_threads()),
    }


@dataclass(frozen=True)
class Sweep:
    joint: Config
    iters: int
    seeds: tuple[int, ...]
    metrics: dict[str, dict[str, int]]  # task -> {metric key: +1 higher is better, -1 lower}
    methods: dict[str, dict]  # name -> model.balancer
    networks: dict[str, str] = field(default_factory=dict)  # name -> joint config file

    @classmethod
    def from_config(cls, cfg: Config) -> Sweep:
        missing = [
            key for key in ("joint", "iters", "seeds", "metrics", "methods") if key not in cfg
        ]
        if missing:
            raise ValueError(f"{cfg.filename}: a Δm sweep config needs {missing}")
        joint = Config.fromfile(cfg.joint)
        tasks = set(joint.model.heads)
        if set(cfg.metrics) != tasks:
            raise ValueError(
                f"{cfg.filename}: `metrics` names tasks {sorted(cfg.metrics)}, the joint config "
                f"{cfg.joint} trains {sorted(tasks)}"
            )
        for task, table in cfg.metrics.items():
            bad = {k: v for k, v in table.items() if v not in (1, -1)}
            if not table or bad:
                raise ValueError(
                    f"{cfg.filename}: metrics.{task} must map metric keys to +1 (higher is "
                    f"better) or -1 (lower is better), got {dict(table)}"
                )
        networks = dict(cfg.get("networks", {}))
        for name, path in networks.items():
            other = set(Config.fromfile(path).model.heads)
            if other != tasks or name in cfg.methods:
                raise ValueError(
                    f"{cfg.filename}: networks.{name} ({path}) must train the joint config's "
                    f"tasks {sorted(tasks)} (it trains {sorted(other)}) under a name no method has"
                )
        seeds = cfg.seeds
        seeds = tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds)
        return cls(
            joint=joint,
            iters=int(cfg.iters),
            seeds=seeds,
            metrics={t: dict(m) for t, m in cfg.metrics.items()},
            methods={name: dict(b) for name, b in cfg.methods.items()},
            networks=networks,
        )

    @property
    def joint_runs(self) -> list[str]:
        """The names of the joint runs: the methods, then the networks."""
        return [*self.methods, *self.networks]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.metrics)

    def single_task_config(self, task: str) -> Config:
        """The joint network with ``task`` alone, as ``configs/single_task/`` builds it: one
        branch group (no stage copied), that task's head and metric, plain weighting; the
        optimizer keys of other heads (``heads.<other>``) dropped with them."""
        cfg = copy.deepcopy(self.joint)
        keep_heads(cfg, (task,))
        cfg.model.backbone.branches = {task: [task]}
        cfg.model.balancer = dict(SINGLE_TASK_BALANCER)
        for key in ("val_evaluator", "test_evaluator"):
            cfg[key] = dict(cfg[key], tasks=(task,))
        cfg.custom_hooks = [
            h for h in cfg.get("custom_hooks", []) if h.get("type") != "GradientDiagnosticsHook"
        ]
        return cfg

    def joint_config(self, method: str) -> Config:
        """The joint network under the balancer ``method``, or the network ``method`` names in
        ``networks`` with its own balancer."""
        if method in self.networks:
            cfg = Config.fromfile(self.networks[method])
        else:
            cfg = copy.deepcopy(self.joint)
            cfg.model.balancer = dict(self.methods[method])
        if "measure_interval" not in cfg.model.balancer:  # the diagnostics hook's measurements
            cfg.model.balancer.measure_interval = self.joint.model.balancer.get(
                "measure_interval", 50
            )
        return cfg

    def plan(self) -> list[tuple[str, bool, int]]:
        """(name, single_task, seed) of every run, single-task runs first."""
        names = [(t, True) for t in self.tasks] + [(m, False) for m in self.joint_runs]
        return [(name, single, seed) for seed in self.seeds for name, single in names]


def keep_heads(cfg: Config, tasks: Sequence[str]) -> None:
    """Keep only the heads of ``tasks`` in ``cfg``, and drop the optimizer keys of the others
    (``heads.<other>`` in ``paramwise_cfg.custom_keys``), which would match nothing."""
    cfg.model.heads = {task: cfg.model.heads[task] for task in tasks}
    if "custom_keys" in cfg.optim_wrapper.get("paramwise_cfg", {}):
        keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
        cfg.optim_wrapper.paramwise_cfg.custom_keys = {
            key: value
            for key, value in keys.items()
            if not key.startswith("heads.") or key.split(".")[1] in tasks
        }


def run_dir(root: Path, name: str, single_task: bool, seed: int) -> Path:
    return root / ("single_task" if single_task else "joint") / name / f"seed{seed}"


def result_path(results: Path, name: str, single_task: bool, seed: int) -> Path:
    return run_dir(results, name, single_task, seed).with_suffix(".json")


def results_dir(out: str | Path) -> Path:
    """Where a sweep reporting to ``out`` keeps its finished runs: ``docs/experiments/x.md``
    → ``docs/experiments/x/results``."""
    return Path(out).with_suffix("") / "results"


def run_config(cfg: Config, *, iters: int, seed: int, work_dir: Path) -> Config:
    """``cfg`` as a sweep trains it: ``iters`` iterations with ``seed`` in ``work_dir``
    (resuming its last checkpoint if there is one), the schedule rescaled, tested once."""
    cfg = copy.deepcopy(cfg)
    cfg.param_scheduler = _rescaled_schedule(
        cfg.get("param_scheduler"), int(cfg.train_cfg.max_iters), iters
    )
    cfg.randomness = dict(seed=seed, deterministic=True)
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters + 1  # tested once, after training
    interval = max(iters // 5, 1)
    cfg.default_hooks.checkpoint = dict(
        type="CheckpointHook", by_epoch=False, interval=interval, max_keep_ckpts=1
    )
    cfg.log_level = "WARNING"
    # mmengine's loggers, message hubs and visualizers are global instances found by name
    cfg.experiment_name = f"dm_{work_dir.parent.name}_{work_dir.name}_{uuid.uuid4().hex[:8]}"
    cfg.visualizer.name = cfg.experiment_name
    cfg.work_dir = str(work_dir)
    cfg.resume = (work_dir / "last_checkpoint").exists()
    cfg.load_from = None
    return cfg


def train_and_test(cfg: Config, *, iters: int, seed: int, work_dir: Path) -> RunResult:
    """Train and test ``cfg`` as ``run_config`` sets it up."""
    cfg = run_config(cfg, iters=iters, seed=seed, work_dir=work_dir)
    origin = provenance(cfg)
    runner, metrics = train_then_test(cfg)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    params = sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and not name.startswith("balancer.")
    )
    times = runner.message_hub.get_scalar("train/time").data[0]
    return RunResult(
        name="",
        single_task=False,
        seed=seed,
        metrics=metrics,
        params=params,
        step_s=float(np.median(times)),
        provenance=origin,
    )


def _rescaled_schedule(schedule, old_iters: int, new_iters: int):
    """The config's LR schedule stretched to ``new_iters`` (warm-up and decay in proportion),
    so a shorter sweep budget still decays its learning rate."""
    if not schedule:
        return schedule
    factor = new_iters / old_iters
    rescaled = []
    for step in schedule:
        step = dict(step)
        for key in ("begin", "end"):
            if key in step:
                step[key] = max(round(step[key] * factor), 0 if key == "begin" else 1)
        rescaled.append(step)
    return rescaled


def run_sweep(
    sweep_config: str | os.PathLike,
    *,
    work_dir: str | Path,
    out: str | Path,
    seeds: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    report_only: bool = False,
) -> list[RunResult]:
    """Every run of the sweep without a result beside ``out`` yet (trained in ``work_dir``), and
    the report ``out`` over all finished ones, rewritten after each run (a partial sweep gives a
    partial table, saying what is missing). ``report_only`` trains nothing: it rewrites the report
    over results made elsewhere, e.g. in a worktree of the commit a table is pinned to."""
    setup_runtime()
    full = sweep = Sweep.from_config(Config.fromfile(sweep_config))  # the report covers all
    if report_only:
        found = _write_report(Path(out), results_dir(out), full, sweep_config, Path(work_dir))
        print(f"Δm sweep: {len(found)} of {len(full.plan())} runs finished; trained nothing")
        return found
    if seeds is not None:
        sweep = replace(sweep, seeds=tuple(seeds))
    if methods is not None:
        unknown = sorted(set(methods) - set(sweep.joint_runs))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; the sweep has {sweep.joint_runs}")
        sweep = replace(
            sweep,
            methods={n: b for n, b in sweep.methods.items() if n in methods},
            networks={n: c for n, c in sweep.networks.items() if n in methods},
        )
    root, results, out = Path(work_dir), results_dir(out), Path(out)
    todo = [run for run in sweep.plan() if not result_path(results, *run).exists()]
    print(
        f"Δm sweep: {len(sweep.plan()) - len(todo)} of {len(sweep.plan())} runs done, "
        f"{len(todo)} to go (work dir {root}, results {results})",
        flush=True,
    )
    here = (source_fingerprint(), data_fingerprint(data_roots(sweep.joint)))
    other = [r for r in load_results(results, sweep) if r.origin != here]
    if other:
        names = ", ".join(_label(r) for r in other)
        print(
            f"Δm sweep: {len(other)} finished run(s) were made by other code or data than this "
            f"checkout's (code {here[0]}, data {here[1]}): {names}. Δm compares only runs of "
            "the same code and data; delete their results to train them again.",
            flush=True,
        )
    with tqdm(todo, unit="run", dynamic_ncols=True) as progress:
        for name, single, seed in progress:
            kind = _kind(single)
            progress.set_postfix_str(f"{kind} {name} seed {seed}")
            cfg = sweep.single_task_config(name) if single else sweep.joint_config(name)
            start = time.perf_counter()
            result = train_and_test(
                cfg, iters=sweep.iters, seed=seed, work_dir=run_dir(root, name, single, seed)
            )
            result.name, result.single_task = name, single
            path = result_path(results, name, single, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(asdict(result), indent=2) + "\n")
            progress.write(
                f"{kind} {name} seed {seed}: {_short(result.metrics, sweep.metrics)} "
                f"({time.perf_counter() - start:.0f} s)"
            )
            _write_report(out, results, full, sweep_config, root)  # a partial table each run
    return _write_report(out, results, full, sweep_config, root)


def _write_report(
    out: Path, results: Path, sweep: Sweep, sweep_config: str | os.PathLike, work_dir: Path
) -> list[RunResult]:
    found = load_results(results, sweep)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"python tools/run_delta_m.py {sweep_config} --work-dir {work_dir} --out {out}"
    per_task = per_task_deltas(found, sweep)
    picture = None
    if per_task:
        path = plot_task_deltas(per_task, out.with_suffix("") / "task_deltas.png")
        picture = path.relative_to(out.parent).as_posix()
    text = report(found, sweep, sweep_config=str(sweep_config), command=command, picture=picture)
    out.write_text(text)
    return found


def _kind(single_task: bool) -> str:
    return "single-task" if single_task else "joint"


def _label(result: RunResult) -> str:
    return f"{_kind(result.single_task)} {result.name} seed {result.seed}"


def _short(metrics: Mapping[str, float], chosen: Mapping[str, Mapping[str, int]]) -> str:
    keys = [k for table in chosen.values() for k in table if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.3g}" for k in keys)


def load_results(results: Path, sweep: Sweep) -> list[RunResult]:
    found = []
    for run in sweep.plan():
        path = result_path(results, *run)
        if path.exists():
            found.append(RunResult(**json.loads(path.read_text())))
    return found


def task_deltas(
    joint: Mapping[str, float],
    single: Mapping[str, Mapping[str, float]],
    metrics: Mapping[str, Mapping[str, int]],
) -> dict[str, float]:
    """Each task's term of Δm, in %: the relative difference of one joint model's ``joint``
    metrics to the task's single-task ``single[task]`` metrics, averaged over its chosen
    ``metrics`` (task → {key: ±1}), positive where the joint model is better. They say which
    task a Δm comes from."""
    per_task = {}
    for task, table in metrics.items():
        terms = [
            sign * (joint[key] - single[task][key]) / single[task][key]
            for key, sign in table.items()
        ]
        per_task[task] = 100.0 * sum(terms) / len(terms)
    return per_task


def delta_m(
    joint: Mapping[str, float],
    single: Mapping[str, Mapping[str, float]],
    metrics: Mapping[str, Mapping[str, int]],
) -> float:
    """Δm in % (Maninis et al. 2019): the mean over tasks of ``task_deltas``; positive is
    better."""
    return _mean(task_deltas(joint, single, metrics))


def _mean(per_task: Mapping[str, float]) -> float:
    """Δm from its tasks' terms."""
    return sum(per_task.values()) / len(per_task)


def _mean_std(values: Sequence[float], digits: int | None = None) -> str:
    """``mean ± std`` (one value: itself) at ``digits`` decimals; by default 3 for values below 1
    (depth abs_rel, 0.104 against 0.108, would read 0.10 and 0.11 at 2) and 2 otherwise."""
    if not values:
        return "–"
    if digits is None:
        digits = 3 if max(abs(v) for v in values) < 1 else 2
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def per_task_deltas(
    results: Sequence[RunResult], sweep: Sweep
) -> dict[str, list[dict[str, float]]]:
    """Per joint run with a Δm (in the sweep's order), ``task_deltas`` of each seed against
    that seed's single-task runs of the same code and data."""
    single = {(r.name, r.seed, r.origin): r for r in results if r.single_task}
    found: dict[str, list[dict[str, float]]] = {}
    for method in sweep.joint_runs:
        for r in results:
            refs = [single.get((t, r.seed, r.origin)) for t in sweep.tasks]
            if r.single_task or r.name != method or None in refs:
                continue
            metrics = {t: ref.metrics for t, ref in zip(sweep.tasks, refs, strict=True)}
            found.setdefault(method, []).append(task_deltas(r.metrics, metrics, sweep.metrics))
    return found


def report(
    results: Sequence[RunResult],
    sweep: Sweep,
    *,
    sweep_config: str,
    command: str | None = None,
    picture: str | None = None,
) -> str:
    """The Markdown table: single-task rows, then one row per method; Δm per seed against that
    seed's single-task runs, mean ± sample std over the seeds that have all of them; then each
    task's term of Δm, and ``picture`` (a link) of them. ``command`` is what resumes the sweep
    (default: ``tools/run_delta_m.py`` on ``sweep_config``)."""
    command = command or f"python tools/run_delta_m.py {sweep_config}"
    keys = [(task, key) for task, table in sweep.metrics.items() for key in table]
    joint = [r for r in results if not r.single_task]
    total = len(sweep.plan())
    arrows = {1: "↑", -1: "↓"}
    header = ["run", *(f"{key} {arrows[sweep.metrics[t][key]]}" for t, key in keys)]
    header += ["Δm (%) ↑", "parameters (M)", "s / iter"]
    joint_cfg = Path(os.path.relpath(sweep.joint.filename)).as_posix()
    lines = [
        f"# Δm: {joint_cfg}, {', '.join(sweep.tasks)}",
        "",
        f"{len(results)} of {total} runs of `{sweep_config}` ({sweep.iters} iterations each, "
        f"seeds {', '.join(map(str, sweep.seeds))}), made by `tools/run_delta_m.py` on "
        f"{os.cpu_count()} CPU cores (torch {torch.__version__}).",
        "Each cell is the mean ± sample standard deviation over the seeds of the test split. "
        "Δm (Maninis et al. 2019) averages, over tasks, the relative difference of each chosen "
        "metric to the single-task run of the same seed, signed so that positive is better "
        "(↑ higher is better, ↓ lower is better): Δm > 0 means no negative transfer. "
        "Single-task runs train the same network with one head and one branch, with equal "
        "weighting; joint runs differ only in `model.balancer`"
        + (
            ", but for the other networks ("
            + ", ".join(
                f"{n}: `{Path(os.path.relpath(c)).as_posix()}`" for n, c in sweep.networks.items()
            )
            + "), each with its own config's balancer."
            if sweep.networks
            else "."
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for task in sweep.tasks:
        runs = [r for r in results if r.single_task and r.name == task]
        cells = [f"single-task {task}"]
        for t, key in keys:
            cells.append(_mean_std([r.metrics[key] for r in runs]) if t == task else "")
        cells += ["0 (reference)" if runs else "–"]
        cells += [_mean_std([r.params / 1e6 for r in runs], 3), _mean_std([r.step_s for r in runs])]
        lines.append("| " + " | ".join(cells) + " |")
    per_task = per_task_deltas(results, sweep)
    for method in sweep.joint_runs:
        runs = [r for r in joint if r.name == method]
        cells = [method]
        cells += [_mean_std([r.metrics[key] for r in runs]) for _, key in keys]
        cells += [_mean_std([_mean(d) for d in per_task.get(method, [])])]
        cells += [_mean_std([r.params / 1e6 for r in runs], 3), _mean_std([r.step_s for r in runs])]
        lines.append("| " + " | ".join(cells) + " |")
    stl_params = sum(
        statistics.mean(r.params for r in results if r.single_task and r.name == t)
        for t in sweep.tasks
        if any(r.single_task and r.name == t for r in results)
    )
    lines += ["", f"The single-task networks together: {stl_params / 1e6:.3f} M parameters."]
    if per_task:
        lines += [
            "",
            "Where each Δm comes from: each task's term, its chosen metrics' signed relative "
            "difference to the single-task run in % (positive: better together), mean ± std "
            "over the seeds.",
            "",
            "| run | " + " | ".join(f"Δ {t} (%)" for t in sweep.tasks) + " | Δm (%) |",
            "|" + "---|" * (len(sweep.tasks) + 2),
        ]
        for method, seeds in per_task.items():
            cells = [method, *(_mean_std([d[t] for d in seeds], 2) for t in sweep.tasks)]
            cells.append(_mean_std([_mean(d) for d in seeds], 2))
            lines.append("| " + " | ".join(cells) + " |")
        if picture is not None:
            lines += ["", f"![each task's term of Δm, per run]({picture})"]
    origins = sorted({r.origin for r in results})
    if len(origins) > 1:
        lines += [
            "",
            f"**These runs come from {len(origins)} versions of the code or data**, and Δm "
            "compares a joint run only with the single-task runs of its seed, code and data "
            "(a joint run without them has no Δm); the cells above mix them:",
            "",
        ]
        for origin in origins:
            names = [_label(r) for r in results if r.origin == origin]
            lines.append(f"- code {origin[0]}, data {origin[1]}: {', '.join(names)}")
    if len(results) < total:
        missing = [
            f"{_kind(s)} {n} seed {k}"
            for n, s, k in sweep.plan()
            if not any(r.name == n and r.single_task == s and r.seed == k for r in results)
        ]
        lines += [
            "",
            f"Not run yet ({len(missing)}): {', '.join(missing)}.",
            "",
            f"To run them (finished runs are kept): `{command}`, with `--seeds K` for one seed at "
            "a time.",
        ]
        commits = sorted({r.provenance["commit"] for r in results if "commit" in r.provenance})
        if len(commits) == 1 and not commits[0].endswith("+changes") and commits[0] != "unknown":
            lines += [
                "",
                f"The finished runs are of commit {commits[0][:12]}; Δm compares only runs of one "
                "code version, so run the rest from a checkout of it: "
                f"`git worktree add ../sweep {commits[0][:12]} && cd ../sweep && PYTHONPATH=. "
                f"{command}` (with `data/` linked in, and these results copied in).",
            ]
    return "\n".join(lines) + "\n"
