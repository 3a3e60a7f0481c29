"""Benchmarks; each subcommand prints and optionally writes a JSON record.

python tools/benchmark.py synth [--num 40] [--height 256] [--width 512] [--json FILE]
python tools/benchmark.py train [--config configs/ad_mtl.py] [--height 512] [--width 1024]
                                [--batch 1] [--iters 3] [--json FILE]
"""

# ruff: noqa: E402  (the environment is set before torch is imported)

from __future__ import annotations

import os

# See tools/train.py: OpenMP threads must not spin while they wait on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import json
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


def bench_train(args: argparse.Namespace) -> dict:
    """Training iterations per second of a config's model (forward, backward, AdamW step) on
    SynthDrive frames rendered at the requested size."""
    import torch
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import build_optim_wrapper

    from adperception.data.datasets.cityscapes import TRAIN_ID_LUT, instance_boxes
    from adperception.data.transforms import PackMTLInputs
    from adperception.engine import setup_runtime
    from adperception.registry import MODELS

    setup_runtime()
    cfg = Config.fromfile(args.config)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    samples = []
    for index in range(args.batch):
        _, frame = generate_sample(0, "train", index, height=args.height, width=args.width)
        boxes, labels = instance_boxes(frame.instance_ids)
        samples.append(
            PackMTLInputs()(
                dict(
                    img=frame.image,
                    gt_seg_map=TRAIN_ID_LUT[frame.label_ids],
                    gt_depth_map=frame.depth,
                    gt_normals_map=frame.normals,
                    gt_bboxes=boxes,
                    gt_bboxes_labels=labels,
                    img_path="",
                    sample_idx=index,
                )
            )
        )
    batch = pseudo_collate(samples)
    times = []
    for _ in range(args.iters + 1):  # the first iteration warms up
        start = time.perf_counter()
        model.train_step(batch, wrapper)
        times.append(time.perf_counter() - start)
    step = statistics.median(times[1:])
    return {
        "benchmark": "train",
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "config": args.config,
        "height": args.height,
        "width": args.width,
        "batch": args.batch,
        "step_s_median": step,
        "iters_per_s": 1.0 / step,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help=bench_synth.__doc__)
    synth.add_argument("--num", type=int, default=40)
    synth.add_argument("--height", type=int, default=256)
    synth.add_argument("--width", type=int, default=512)
    synth.add_argument("--seed", type=int, default=0)
    train = sub.add_parser("train", help=bench_train.__doc__)
    train.add_argument("--config", default="configs/ad_mtl.py")
    train.add_argument("--height", type=int, default=512)
    train.add_argument("--width", type=int, default=1024)
    train.add_argument("--batch", type=int, default=1)
    train.add_argument("--iters", type=int, default=3)
    for p in (synth, train):
        p.add_argument("--json", type=Path, help="also write the record to this file")
    args = parser.parse_args()
    record = {"synth": bench_synth, "train": bench_train}[args.command](args)
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
