"""Export a training checkpoint as a self-contained inference directory (and ONNX).

    python tools/export.py configs/quickstart.py work_dirs/quickstart/iter_1000.pth \
        --format checkpoint --out exported/quickstart [--half]
    python tools/export.py CONFIG CKPT --format onnx --out DIR [--shape H W]

``checkpoint`` writes model.safetensors, config.json, meta.json and manifest.json; ``onnx`` writes
the same plus model.onnx (fp32, dynamic batch; inputs: the images padded to a fixed H×W, the test
scale padded to 32 unless --shape is given, and each image's (h, w) inside that padding). --half
stores the safetensors weights in fp16.
"""

from __future__ import annotations

# ruff: noqa: E402  (the environment is set before torch is imported)
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="mmengine training checkpoint (.pth)")
    parser.add_argument("--format", choices=["checkpoint", "onnx"], default="checkpoint")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--half", action="store_true", help="fp16 safetensors weights")
    parser.add_argument(
        "--shape", nargs=2, type=int, metavar=("H", "W"), help="ONNX input size (multiples of 32)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Export; a ``UserError`` (a wrong config file, a checkpoint that is damaged or does not fit
    the config) is printed as ``error: ...`` lines and returns 2."""
    args = parse_args(argv)
    from adperception.engine import UserError, load_config
    from adperception.export import add_onnx, export_checkpoint

    try:
        cfg = load_config(args.config)
        out = export_checkpoint(cfg, args.checkpoint, args.out, half=args.half)
        if args.format == "onnx":
            add_onnx(out, input_shape=tuple(args.shape) if args.shape else None)
    except UserError as error:
        return error.report()
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
