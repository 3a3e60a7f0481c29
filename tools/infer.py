"""Run an exported model on images and write one prediction panel per image.

    python tools/infer.py exported/quickstart img1.png img2.png --out-dir vis/ [--score-thr 0.3]
    python tools/infer.py exported/quickstart frames/ --out-dir vis/

A panel holds one tile per task of the model, two per row (boxes with labels, class overlays
with a legend, depth colour map with a scale bar, normals as RGB, ...). --onnx runs the
directory's model.onnx in onnxruntime.
A directory stands for its image files (IMAGE_SUFFIXES, sorted by name, subfolders not searched).
Every input is checked before the model loads: a missing or unreadable file, an image under
MIN_SIDE pixels or two inputs whose panels would share a name stop the run, naming the files.
"""

from __future__ import annotations

# ruff: noqa: E402  (the environment is set before torch is imported)
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
from collections.abc import Sequence
from pathlib import Path

#: The image files a directory argument stands for (suffixes compared case-insensitively).
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
#: Smallest height and width accepted, the network's coarsest stride: anything smaller is an
#: icon, not a scene, and its panel tiles have no room for labels and legends.
MIN_SIDE = 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exported", help="directory written by tools/export.py")
    parser.add_argument("images", nargs="+", help="image files or directories of them")
    parser.add_argument("--out-dir", required=True, help="where the PNG panels go")
    parser.add_argument("--score-thr", type=float, default=0.3, help="boxes drawn from this score")
    parser.add_argument("--onnx", action="store_true", help="run model.onnx with onnxruntime")
    args = parser.parse_args(argv)
    try:
        args.images = image_paths(args.images)
    except ValueError as err:
        parser.error(str(err))
    return args


def image_paths(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files of ``inputs``, each directory expanded in place (see the module doc).

    Raises ``ValueError`` with one line per bad input, naming it: missing, not a readable image,
    smaller than ``MIN_SIDE``, a directory without images, or a panel name already taken.
    """
    from PIL import Image

    paths, errors = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not found:
                errors.append(f"{item}: directory without {'/'.join(IMAGE_SUFFIXES)} files")
            paths.extend(found)
        elif item.exists():
            paths.append(item)
        else:
            errors.append(f"{item}: no such file or directory")
    panel_of: dict[str, Path] = {}
    for path in paths:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except OSError as err:
            errors.append(f"{path}: not a readable image file ({err})")
            continue
        if min(height, width) < MIN_SIDE:
            errors.append(f"{path}: image is {height}×{width}, smaller than {MIN_SIDE} px a side")
        name = f"{path.stem}.png"
        if name in panel_of:
            errors.append(f"{path}: its panel {name} would overwrite the one of {panel_of[name]}")
        panel_of.setdefault(name, path)
    if errors:
        raise ValueError("\n".join(errors))
    return paths


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
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
        cv2.imwrite(str(out_dir / f"{path.stem}.png"), panel[..., ::-1])


if __name__ == "__main__":
    main()
