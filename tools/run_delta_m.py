"""Δm sweep: train a joint config's network once per task and jointly under each balancer of a
sweep config, over seeds; test every run; write the Markdown table of metrics and Δm.

    python tools/run_delta_m.py configs/experiments/delta_m_synthdrive.py \\
        --work-dir work_dirs/delta_m --out docs/experiments/synthdrive.md

Resumable: run the same command again after an interruption. Finished runs (WORK_DIR/.../
result.json) are kept, an unfinished one resumes from its last checkpoint, and the table is
rewritten over every finished run (a partial sweep gives a partial table that lists what is
missing). --seeds and --methods run a part of the sweep, e.g. one seed per session.
"""

from __future__ import annotations

# ruff: noqa: E402  (the environment is set before torch is imported)
import os

# See tools/train.py for the wait policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep config (joint, iters, seeds, metrics, methods)")
    parser.add_argument("--work-dir", type=Path, default=Path("work_dirs/delta_m"))
    parser.add_argument("--out", type=Path, default=Path("docs/experiments/synthdrive.md"))
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="only these seeds")
    parser.add_argument("--methods", nargs="+", metavar="NAME", help="only these joint methods")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported after parsing so that --help answers without loading torch and the project.
    from adperception.engine.delta_m import run_sweep

    run_sweep(
        args.sweep, work_dir=args.work_dir, out=args.out, seeds=args.seeds, methods=args.methods
    )
    print(f"Δm table: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
