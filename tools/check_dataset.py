"""Check every file of a dataset (a root in the Cityscapes, BDD100K or NYUv2 layout, or the
datasets of a config) and print one line per problem; exit status 1 when there is any.

A BDD100K root (``images/100k/...``) is checked for its partial labels: every image and mask is
read, and every frame of ``labels/det_20/det_{split}.json`` (a frame naming a missing image, an
unknown category, a box with x2 < x1 or outside its image); an image without some label file is
no problem, a drivable or lane mask without its image is.

Frames that decode fine but that no driving camera would see (one instance over half of the
image, valid depth on under a tenth of it) are printed as ``PATH: warning: ...`` lines; they do
not change the exit status, since a real dataset may hold a few.

    python tools/check_dataset.py configs/_base_/datasets/cityscapes.py
    python tools/check_dataset.py data/synthdrive --splits train val
    python tools/check_dataset.py data/bdd100k
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from adperception.data.check import check_sample, collect_samples, implausible_view
from adperception.data.formats import DataFileError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", metavar="CONFIG_OR_ROOT")
    parser.add_argument("--splits", nargs="+", help="only these splits (default: all)")
    args = parser.parse_args(argv)
    try:
        samples, problems = collect_samples(args.source, args.splits)
    except DataFileError as err:
        print(err)
        return 1
    warnings = []
    for sample in tqdm(samples, desc="checking", unit="sample", file=sys.stderr):
        found = check_sample(sample)
        problems.extend(found)
        if not found:  # a broken file is reported once, as a problem
            warnings.extend(implausible_view(sample))
    for problem in problems:
        print(problem)
    for warning in warnings:
        print(f"{warning.path}: warning: {warning.message}")
    print(
        f"checked {len(samples)} sample(s): {len(problems)} problem(s), {len(warnings)} warning(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
