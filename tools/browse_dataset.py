"""Draw samples of a dataset (a root in the Cityscapes, BDD100K or NYUv2 layout, or a config's
dataset) as panels of their targets, one tile per task it labels, two per row, one
``{out_dir}/{stem}.png`` per sample.

    python tools/browse_dataset.py data/synthdrive --split val --num 4 --out-dir outputs/browse
    python tools/browse_dataset.py configs/_base_/datasets/synthdrive.py --split train --augment
"""

from __future__ import annotations

import argparse
import os
import sys

from mmengine.config import Config
from tqdm import tqdm

from adperception.data.check import dataset_cfgs
from adperception.data.datasets import build_pipeline
from adperception.data.formats import DataFileError, write_png
from adperception.data.visualize import draw_sample, sample_stem
from adperception.registry import DATASETS


def train_transforms(config: str) -> list:
    """The config's train pipeline without its final packing into tensors."""
    dataset = Config.fromfile(config).train_dataloader.dataset
    while "dataset" in dataset:
        dataset = dataset.dataset
    return build_pipeline(t for t in dataset.pipeline if t["type"] != "PackMTLInputs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", metavar="CONFIG_OR_ROOT")
    parser.add_argument("--split", default="val")
    parser.add_argument("--num", type=int, default=4, help="samples to draw, from the first")
    parser.add_argument("--out-dir", default="outputs/browse")
    parser.add_argument(
        "--augment", action="store_true", help="apply the config's train transforms first"
    )
    args = parser.parse_args(argv)
    if args.augment and not os.path.isfile(args.source):
        parser.error("--augment needs a config file")
    try:
        cfg = dataset_cfgs(args.source, [args.split])[0]
        dataset = DATASETS.build({**cfg, "pipeline": []})
    except DataFileError as err:
        print(err)
        return 1
    transforms = train_transforms(args.source) if args.augment else []
    meta = dataset.metainfo
    os.makedirs(args.out_dir, exist_ok=True)
    for idx in tqdm(range(min(args.num, len(dataset))), desc="drawing", unit="sample"):
        sample = dataset.get_raw_sample(idx)
        for transform in transforms:
            sample = transform(sample)
        panel = draw_sample(sample, metainfo=meta, tasks=dataset.tasks)
        write_png(os.path.join(args.out_dir, sample_stem(sample["img_path"]) + ".png"), panel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
