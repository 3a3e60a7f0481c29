"""How much of each SynthDrive frame its largest object covers, over seeds: the numbers behind
``docs/benchmarks.md``'s "SynthDrive views" and the checker's implausible-view warnings.

    python tools/synth_view_stats.py --seeds 0 1 2 3 4 --num 200 [--height 256] [--width 512]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from adperception.data.check import MAX_INSTANCE_SHARE, MIN_VALID_DEPTH_SHARE, largest_instance
from adperception.data.formats import depth_to_disparity_png
from adperception.data.synth import generate_sample
from adperception.data.synth.scene import LABEL

PERCENTILES = (50, 90, 99, 100)


def view_stats(seeds: list[int], num: int, split: str, height: int, width: int) -> dict:
    """Percentiles of the largest instance's share of the image and counts of implausible
    frames over samples 0..num-1 of ``split`` for each seed."""
    instance, largest_class, valid, worst = [], [], [], []
    for seed in seeds:
        for index in range(num):
            scene, frame = generate_sample(seed, split, index, height=height, width=width)
            value, share = largest_instance(frame.instance_ids)
            instance.append(share)
            # The largest class other than road and sky, stuff included (issue 10's count).
            counts = np.bincount(frame.label_ids.ravel(), minlength=256)
            counts[[LABEL["road"], LABEL["sky"]]] = 0
            largest_class.append(counts.max() / frame.label_ids.size)
            cam = scene.camera
            valid.append(
                float((depth_to_disparity_png(frame.depth, cam.baseline, cam.fx) > 0).mean())
            )
            worst.append((share, seed, index, value))
    instance, largest_class, valid = (np.array(a) for a in (instance, largest_class, valid))
    return {
        "seeds": seeds,
        "samples_per_seed": num,
        "split": split,
        "height": height,
        "width": width,
        "largest_instance_share_percentiles": {
            f"p{q}": float(np.percentile(instance, q)) for q in PERCENTILES
        },
        "frames": len(instance),
        "instance_over_50": int((instance > 0.5).sum()),
        "instance_over_60": int((instance > 0.6).sum()),
        "class_over_60": int((largest_class > 0.6).sum()),
        "valid_depth_under_10": int((valid < MIN_VALID_DEPTH_SHARE).sum()),
        "warned": int(((instance > MAX_INSTANCE_SHARE) | (valid < MIN_VALID_DEPTH_SHARE)).sum()),
        "worst": [
            {"seed": s, "index": i, "instance": v, "share": round(x, 4)}
            for x, s, i, v in sorted(worst, reverse=True)[:5]
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--num", type=int, default=200, help="samples per seed")
    parser.add_argument("--split", default="train")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--json", type=Path, help="also write the record to this file")
    args = parser.parse_args()
    record = view_stats(args.seeds, args.num, args.split, args.height, args.width)
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
