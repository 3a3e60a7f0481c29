"""Balancer comparisons (``tools/run_experiment.py``): each config (a *variant*) is trained once
per method of its ``methods`` table and per seed, then tested; the results become one Markdown
table per variant, with the diagnostics pictures of chosen runs.

A config names its methods itself (``methods = dict(name=<model.balancer>, ...)``), because
their settings (DWA's epoch length, hand-set static weights) depend on its data and losses.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from tqdm import tqdm

from adperception.balancing import Escalation
from adperception.diagnostics.plots import (
    diagnostic_groups,
    find_scalars,
    read_scalars,
    write_plots,
)
from adperception.engine.runner import build_runner, setup_runtime

#: Methods whose first-seed run of every variant is drawn, when they are run.
PICTURED = ("Escalation", "EqualWeighting")


@dataclass
class Run:
    """One training run: a variant (config) with a method (balancer) and a seed."""

    variant: str
    method: str
    seed: int
    metrics: dict[str, float]  # the test metrics, e.g. {"digit/accuracy": 97.2, ...}
    weights: dict[str, float]  # task -> weight_<task> of the last training step
    conflict_rate: float  # mean over the diagnostics' measurements; NaN without any
    step_ms: float  # median wall time of a training iteration
    escalated_at: int | None  # Escalation only: the iteration (1-based, as logged) it switched
    work_dir: Path
    seconds: float  # wall time of training and testing


def load_methods(cfg: Config, names: Sequence[str] | None) -> dict[str, dict]:
    """The config's ``methods`` table, restricted to ``names`` (in the table's order)."""
    table = cfg.get("methods")
    if not table:
        raise ValueError(f"{cfg.filename}: no `methods` table (name -> model.balancer)")
    unknown = sorted(set(names or ()) - set(table))
    if unknown:
        raise ValueError(f"{cfg.filename}: unknown method(s) {unknown}; known: {list(table)}")
    return {name: dict(b) for name, b in table.items() if names is None or name in names}


def train_then_test(cfg: Config) -> tuple[Runner, dict[str, float]]:
    """Build ``cfg``'s runner, train, then test; the console shows errors only (the run's log
    file keeps mmengine's warnings), and the log handlers are closed after."""
    runner = build_runner(cfg)
    for handler in runner.logger.handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)
    try:
        runner.train()
        metrics = {key: float(value) for key, value in runner.test().items()}
    finally:
        for handler in list(runner.logger.handlers):
            handler.close()
            runner.logger.removeHandler(handler)
    return runner, metrics


def train_and_test(
    cfg: Config,
    *,
    variant: str,
    method: str,
    balancer: dict,
    seed: int,
    iters: int | None,
    work_dir: Path,
    resume: bool = False,
) -> Run:
    """Trains ``cfg`` with ``balancer`` and ``seed`` in a fresh ``work_dir``, then tests it.

    No checkpoints; the run's log file keeps mmengine's warnings (the console gets errors only).
    The result is kept in ``work_dir/run.json`` with a hash of the run's config (without the
    ``methods`` table, which may grow meanwhile); ``resume`` returns it instead of training when
    that hash matches, so a sweep stopped half-way goes on.
    """
    start = time.perf_counter()
    cfg = copy.deepcopy(cfg)
    cfg.model.balancer = balancer
    cfg.randomness = dict(seed=seed, deterministic=True)
    if iters is not None:
        cfg.train_cfg.max_iters = iters
        cfg.train_cfg.val_interval = iters
    cfg.default_hooks.checkpoint = None
    cfg.log_level = "WARNING"
    settings = {key: value for key, value in cfg.to_dict().items() if key != "methods"}
    config_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    record = work_dir / "run.json"
    if resume and record.is_file():
        saved = json.loads(record.read_text())
        if saved["config_hash"] == config_hash:
            return Run(**{**saved["run"], "work_dir": work_dir})
    # mmengine's loggers, message hubs and visualizers are global instances found by name:
    # every run needs its own, or it would log into an earlier run's.
    cfg.experiment_name = f"{variant}_{method}_seed{seed}_{uuid.uuid4().hex[:8]}"
    cfg.visualizer.name = cfg.experiment_name
    shutil.rmtree(work_dir, ignore_errors=True)
    cfg.work_dir = str(work_dir)
    runner, metrics = train_then_test(cfg)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    hub = runner.message_hub
    scalars = read_scalars(find_scalars(work_dir))
    conflicts = [
        value
        for group in diagnostic_groups(scalars)
        for value in scalars[f"diag/{group}/conflict_rate"].values
    ]
    balancer = model.balancer
    escalated = isinstance(balancer, Escalation) and bool(balancer.escalated)
    run = Run(
        variant=variant,
        method=method,
        seed=seed,
        metrics=metrics,
        weights={t: float(hub.get_scalar(f"train/weight_{t}").current()) for t in model.tasks},
        conflict_rate=float(np.mean(conflicts)) if conflicts else math.nan,
        step_ms=1000 * float(np.median(hub.get_scalar("train/time").data[0])),
        escalated_at=int(balancer.escalated_at) + 1 if escalated else None,
        work_dir=work_dir,
        seconds=time.perf_counter() - start,
    )
    saved = {**dataclasses.asdict(run), "work_dir": str(work_dir)}
    partial = record.with_suffix(".part")  # renamed when complete: a killed write leaves no record
    partial.write_text(json.dumps(dict(config_hash=config_hash, run=saved), indent=1))
    partial.replace(record)
    return run


def run_experiment(
    configs: Sequence[str],
    *,
    methods: Sequence[str] | None = None,
    seeds: int = 5,
    iters: int | None = None,
    work_dir: str | Path = "work_dirs/experiments",
    out: str | Path = "docs/experiments/digits.md",
    resume: bool = False,
) -> list[Run]:
    """Every config × method × seed (0 … ``seeds``−1), then the report ``out``; ``resume``
    keeps the finished runs of the same config (``train_and_test``).

    Pictures of the first seed's runs of ``PICTURED`` go to ``out`` without its suffix
    (``docs/experiments/digits/<variant>/<method>_seed0/*.png``), linked from the report.
    """
    setup_runtime()
    out = Path(out)
    variants = {Path(path).stem: Config.fromfile(path) for path in configs}
    plan = [
        (variant, method, balancer, seed)
        for variant, cfg in variants.items()
        for method, balancer in load_methods(cfg, methods).items()
        for seed in range(seeds)
    ]
    runs = []
    with tqdm(plan, unit="run") as progress:
        for variant, method, balancer, seed in progress:
            progress.set_postfix_str(f"{variant} {method} seed {seed}")
            runs.append(
                train_and_test(
                    variants[variant],
                    variant=variant,
                    method=method,
                    balancer=balancer,
                    seed=seed,
                    iters=iters,
                    work_dir=Path(work_dir) / variant / method / f"seed{seed}",
                    resume=resume,
                )
            )
    elapsed = sum(run.seconds for run in runs)
    pictures = {
        (run.variant, run.method): write_plots(
            read_scalars(find_scalars(run.work_dir)),
            out.with_suffix("") / run.variant / f"{run.method}_seed{run.seed}",
        )[0]
        for run in runs
        if run.method in PICTURED and run.seed == 0
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(runs, variants, pictures, out.parent, elapsed=elapsed, iters=iters))
    return runs


def _mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(
    runs: Sequence[Run],
    variants: dict[str, Config],
    pictures: dict[tuple[str, str], list[Path]],
    root: Path,
    *,
    elapsed: float,
    iters: int | None,
) -> str:
    """The Markdown report: setup, one table per variant, the pictures (paths relative to
    ``root``, the report's folder)."""
    seeds = sorted({run.seed for run in runs})
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    minutes, seconds = divmod(round(elapsed), 60)
    lines = [
        f"# Balancer comparison: {', '.join(variants)}",
        "",
        f"{len(runs)} training runs ({seed_text}) in {minutes} min {seconds} s on "
        f"{os.cpu_count()} CPU cores (torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)), made by `tools/run_experiment.py`.",
        "Metrics are those of the test split, mean ± sample standard deviation over the seeds; "
        "final weights are the loss weights `weight_<task>` of the last training step, "
        "averaged over the seeds (a gradient aggregator's own coefficients are not in them: "
        "its diagnostics draw them); the conflict rate is the "
        "share of task pairs whose gradients on shared parameters have a negative inner "
        "product, averaged over the steps that computed per-task gradients (the diagnostics "
        "hook's, and every surgery step); ms/step is the median iteration time, averaged over "
        "the seeds.",
    ]
    for variant, cfg in variants.items():
        rows = [run for run in runs if run.variant == variant]
        steps = iters if iters is not None else cfg.train_cfg.max_iters
        batch = cfg.train_dataloader.batch_size
        config = Path(os.path.relpath(cfg.filename)).as_posix()
        lines += ["", f"## {variant} (`{config}`)", ""]
        lines += [f"{steps} iterations of batch {batch}; balancer per row (`model.balancer`).", ""]
        keys = list(rows[0].metrics)
        tasks = list(rows[0].weights)
        weights_header = f"final weights ({', '.join(tasks)})"
        header = ["method", *keys, weights_header, "mean conflict rate", "ms/step"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in dict.fromkeys(run.method for run in rows):
            group = [run for run in rows if run.method == method]
            weights = ", ".join(
                f"{statistics.mean(run.weights[t] for run in group):.3g}" for t in tasks
            )
            cells = [method, *(_mean_std([run.metrics[k] for run in group]) for k in keys)]
            cells += [weights, f"{statistics.mean(run.conflict_rate for run in group):.2f}"]
            cells += [f"{statistics.mean(run.step_ms for run in group):.1f}"]
            lines += ["| " + " | ".join(cells) + " |"]
        escalations = [run for run in rows if run.method == "Escalation"]
        if escalations:
            switched = sorted(r.escalated_at for r in escalations if r.escalated_at is not None)
            iterations = "iteration" if len(switched) == 1 else "iterations"
            at = f", at {iterations} {', '.join(map(str, switched))}" if switched else ""
            lines += [
                "",
                f"Escalation switched in {len(switched)} of {len(escalations)} runs{at} "
                "(to PCGrad, equal gradient norms or both: each run's log names the remedy and "
                "its evidence).",
            ]
        for (pictured_variant, method), files in pictures.items():
            if pictured_variant != variant:
                continue
            lines += ["", f"Diagnostics of {method}, seed 0:", ""]
            lines += [f"![{f.stem}]({Path(os.path.relpath(f, root)).as_posix()})" for f in files]
    return "\n".join(lines) + "\n"
