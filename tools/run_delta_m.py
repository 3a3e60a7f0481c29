"""Δm sweep: train a joint config's network once per task and jointly under each balancer of a
sweep config, over seeds; test every run; write the Markdown table of metrics and Δm.

    python tools/run_delta_m.py configs/experiments/delta_m_synthdrive.py

The sweep config names its report (``out``) and work dir (``work_dir``, default
``work_dirs/<config name>``); --out and --work-dir override them.

Resumable: run the same command again after an interruption. Finished runs (WORK_DIR/.../
result.json) are kept, an unfinished one resumes from its last checkpoint, and the table is
rewritten over every finished run (a partial sweep gives a partial table that lists what is
missing). --seeds and --methods run a part of the sweep, e.g. one seed per session;
--report-only trains nothing and rewrites the table from the finished runs.
"""

from __future__ import annotations

# ruff: noqa: E402  (the environment is set before torch is imported)
import os

# See tools/train.py for the wait policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep config (joint, iters, seeds, metrics, methods)")
    parser.add_argument("--work-dir", type=Path, help="default: the sweep config's work_dir")
    parser.add_argument("--out", type=Path, help="the report; default: the sweep config's out")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="only these seeds")
    parser.add_argument("--methods", nargs="+", metavar="NAME", help="only these joint methods")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite the table from the finished runs beside it (e.g. results "
        "copied in from a worktree of the commit that made them)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported after parsing so that --help answers without loading torch and the project.
    from mmengine.config import Config

    from adperception.engine.delta_m import run_sweep

    cfg = Config.fromfile(args.sweep)
    out = args.out or cfg.get("out")
    if out is None:
        print(f"run_delta_m: {args.sweep} names no report (out = ...): give --out", file=sys.stderr)
        return 2
    work_dir = args.work_dir or cfg.get("work_dir") or Path("work_dirs") / Path(args.sweep).stem
    run_sweep(
        args.sweep,
        work_dir=work_dir,
        out=out,
        seeds=args.seeds,
        methods=args.methods,
        report_only=args.report_only,
    )
    print(f"Δm table: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
