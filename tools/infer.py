"""Run an exported model on images and write one prediction panel per image.

    python tools/infer.py exported/quickstart img1.png img2.png --out-dir vis/ [--score-thr 0.3]

A panel is a 2×2 grid: boxes with labels | segmentation overlay with a legend // depth colour
map with a scale bar | normals as RGB. --onnx runs the directory's model.onnx in onnxruntime.
"""

from __future__ import annotations

# ruff: noqa: E402  (the environment is set before torch is imported)
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exported", help="directory written by tools/export.py")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--out-dir", required=True, help="where the PNG panels go")
    parser.add_argument("--score-thr", type=float, default=0.3, help="boxes drawn from this score")
    parser.add_argument("--onnx", action="store_true", help="run model.onnx with onnxruntime")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from pathlib import Path

    import cv2
    from tqdm import tqdm

    from adperception.export import draw_result, inference, load_exported
    from adperception.export.postprocess import read_image

    model = load_exported(args.exported, onnx=args.onnx)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in tqdm(args.images, desc="inference", unit="image"):
        image = read_image(path)
        result = inference(model, image)
        panel = draw_result(image, result, model.meta, score_thr=args.score_thr)
        cv2.imwrite(str(out_dir / f"{Path(path).stem}.png"), panel[..., ::-1])


if __name__ == "__main__":
    main()
