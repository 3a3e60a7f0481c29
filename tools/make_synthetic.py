"""Generate the SynthDrive dataset in the Cityscapes layout (plus normals).

    python tools/make_synthetic.py --out data/synthdrive --train 400 --val 100 --seed 0

Re-running completes an interrupted tree; samples already written are kept.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from tqdm import tqdm

from adperception.data.synth import generate_dataset


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset root to write")
    parser.add_argument("--train", type=int, default=400, help="training samples")
    parser.add_argument("--val", type=int, default=100, help="validation samples")
    parser.add_argument("--test", type=int, default=0, help="test samples")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="generator processes (default: one per available core)",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    counts = {
        split: n
        for split, n in (("train", args.train), ("val", args.val), ("test", args.test))
        if n > 0
    }
    start = time.perf_counter()
    try:
        written = generate_dataset(
            args.out,
            counts,
            seed=args.seed,
            height=args.height,
            width=args.width,
            workers=args.workers,
            progress=lambda it, total: tqdm(it, total=total, unit="sample", desc="SynthDrive"),
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    total = sum(counts.values())
    print(
        f"{args.out}: {written} samples written, {total - written} already present "
        f"({elapsed:.1f} s, {args.workers} workers)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
