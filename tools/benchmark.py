"""Benchmarks; each subcommand prints and optionally writes a JSON record.

python tools/benchmark.py synth [--num 40] [--height 256] [--width 512] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from adperception.data.synth import generate_sample
from adperception.data.synth.writer import sample_stem, write_sample

SYNTH_TARGET_PER_CORE = 20.0


def bench_synth(args: argparse.Namespace) -> dict:
    """SynthDrive samples rendered and written per second on one core (one process)."""
    render_s, write_s = [], []
    with tempfile.TemporaryDirectory() as root:
        generate_sample(args.seed, "train", 0, height=args.height, width=args.width)  # warm-up
        for index in range(args.num):
            start = time.perf_counter()
            scene, frame = generate_sample(
                args.seed, "train", index, height=args.height, width=args.width
            )
            mid = time.perf_counter()
            write_sample(root, "train", sample_stem(index), frame, scene.camera)
            render_s.append(mid - start)
            write_s.append(time.perf_counter() - mid)
        size = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())
    total = sum(render_s) + sum(write_s)
    return {
        "benchmark": "synth",
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cores_available": len(os.sched_getaffinity(0)),
        "height": args.height,
        "width": args.width,
        "samples": args.num,
        "samples_per_s_per_core": args.num / total,
        "target_samples_per_s_per_core": SYNTH_TARGET_PER_CORE,
        "render_ms_median": 1e3 * statistics.median(render_s),
        "write_ms_median": 1e3 * statistics.median(write_s),
        "bytes_per_sample": size / args.num,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help=bench_synth.__doc__)
    synth.add_argument("--num", type=int, default=40)
    synth.add_argument("--height", type=int, default=256)
    synth.add_argument("--width", type=int, default=512)
    synth.add_argument("--seed", type=int, default=0)
    for p in (synth,):
        p.add_argument("--json", type=Path, help="also write the record to this file")
    args = parser.parse_args()
    record = {"synth": bench_synth}[args.command](args)
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
