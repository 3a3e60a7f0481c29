"""Recommend which tasks should share a backbone branch, from a training run's task affinity.

    python tools/train.py configs/experiments/affinity_synthdrive.py --work-dir work_dirs/affinity
    python tools/analyze_affinity.py work_dirs/affinity --budget 2

Reads the newest training run under WORK_DIR: the lookahead affinity of ``AffinityHook``
(Fifty et al. 2021) when the run logged it, else the gradient cosines of
``GradientDiagnosticsHook``. Prints the time-averaged T×T affinity, the best groupings for every
number of branches up to the budget (TAG's criterion), the ``backbone.branches`` to use and, from
the per-stage gradient cosines, how many stages to share (``shared_stages``), with the reasons.
Writes ``affinity.png`` (the matrix over time) and ``affinity.json`` to ``--out-dir`` (default:
``<run>/affinity``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adperception.diagnostics.affinity import (
    CONFLICT_COSINE,
    affinity_series,
    best_groupings,
    branch_point,
    late_mean,
    stage_cosines,
)
from adperception.diagnostics.plots import find_scalars, plot_affinity, read_scalars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", metavar="WORK_DIR")
    parser.add_argument("--budget", type=int, default=2, help="most branches (groups) to use")
    parser.add_argument(
        "--since", type=float, default=0.5, help="average the steps from this fraction of the run"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=CONFLICT_COSINE,
        help=f"mean cosine below which groups stop sharing (default {CONFLICT_COSINE})",
    )
    parser.add_argument("--out-dir", type=Path, help="where affinity.png and affinity.json go")
    args = parser.parse_args(argv)
    if args.budget < 1:
        parser.error(f"--budget must be at least 1 branch, got {args.budget}")
    try:
        path = find_scalars(args.work_dir)
        scalars = read_scalars(path)
        tasks = tuple(k[len("loss_") :] for k in scalars if k.startswith("loss_"))
        kind, steps, matrices = affinity_series(scalars, tasks)
        matrix = late_mean(steps, matrices, since=args.since)
        ranked = {n: best_groupings(matrix, tasks, max_groups=n) for n in range(1, args.budget + 1)}
    except (FileNotFoundError, ValueError) as err:
        print(f"analyze_affinity: {err}", file=sys.stderr)
        return 1
    out_dir = args.out_dir or path.parents[1] / "affinity"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"read {path}: {kind} affinity at {len(steps)} steps, mean from step "
        f"{int(args.since * steps.max())} on (row: task stepped; column: task affected)"
    )
    width = max(len(t) for t in tasks) + 2
    print(" " * width + "".join(f"{t:>{width + 4}}" for t in tasks))
    for task, row in zip(tasks, matrix, strict=True):
        print(f"{task:<{width}}" + "".join(f"{v:>{width + 4}.3g}" for v in row))
    best, _ = ranked[args.budget][0]
    for n, options in ranked.items():
        top = ", ".join(f"{_text(groups)} {score:+.3g}" for groups, score in options[:3])
        print(f"best with at most {n} branch{'es' if n > 1 else ''}: {top}")
    branches = {"_".join(group): list(group) for group in best}
    print(f"recommended: backbone.branches = {branches}")
    shared, reasons = branch_point(
        stage_cosines(scalars, since=args.since), best, threshold=args.threshold
    )
    for reason in reasons:
        print(f"  {reason}")
    if shared is None:
        print(
            "shared_stages: no stage was measured across the groups; run AffinityHook on a "
            "hard-sharing config (configs/experiments/architectures/hard_sharing.py)"
        )
    else:
        print(f"recommended: backbone.shared_stages = {shared}")
    report = {
        "work_dir": str(args.work_dir),
        "kind": kind,
        "tasks": list(tasks),
        "steps": steps.tolist(),
        "mean": [[None if v != v else float(v) for v in row] for row in matrix],
        "groupings": {
            str(n): [
                {"groups": [list(g) for g in groups], "score": score} for groups, score in options
            ]
            for n, options in ranked.items()
        },
        "branches": branches,
        "shared_stages": shared,
        "reasons": reasons,
    }
    (out_dir / "affinity.json").write_text(json.dumps(report, indent=2) + "\n")
    picture = plot_affinity(kind, steps, matrices, tasks, out_dir / "affinity.png")
    print(f"wrote {out_dir / 'affinity.json'}\nwrote {picture}")
    return 0


def _text(groups: list[tuple[str, ...]]) -> str:
    return " | ".join("+".join(group) for group in groups)


if __name__ == "__main__":
    sys.exit(main())
