"""Compare loss balancers: train and test each config once per method of its `methods` table and
per seed, and write a Markdown report with the diagnostics pictures of representative runs.

    python tools/run_experiment.py configs/experiments/digits.py \\
        configs/experiments/digits_imbalanced.py --seeds 5

Runs go to WORK_DIR/<config stem>/<method>/seed<k> (replaced when they exist; with --resume,
a run finished there with the same config is kept); pictures next to the report, in a folder
named after it (docs/experiments/digits/).
"""

from __future__ import annotations

# ruff: noqa: E402  (the environment is set before torch is imported)
import os

# See tools/train.py for the wait policy. One thread: the digits network's tensors are too small
# to split, and two threads took 8 ms per plain training step instead of 2.5 ms on 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="one config per variant")
    parser.add_argument(
        "--methods", nargs="+", metavar="NAME", help="run only these rows of `methods`"
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (default 5)")
    parser.add_argument("--iters", type=int, help="training iterations (default: the config's)")
    parser.add_argument("--work-dir", type=Path, default=Path("work_dirs/experiments"))
    parser.add_argument("--out", type=Path, default=Path("docs/experiments/digits.md"))
    parser.add_argument(
        "--resume", action="store_true", help="keep runs already finished with the same config"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Imported after parsing so that --help answers without loading torch and the project.
    from adperception.engine.experiment import run_experiment

    runs = run_experiment(
        args.configs,
        methods=args.methods,
        seeds=args.seeds,
        iters=args.iters,
        work_dir=args.work_dir,
        out=args.out,
        resume=args.resume,
    )
    print(f"{len(runs)} runs; wrote {args.out}")


if __name__ == "__main__":
    main()
