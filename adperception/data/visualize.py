"""One picture per sample of the data contract, to see that every target lines up with the image.

A grid of image-sized tiles, two per row, one per task in registry order, each drawn by its task
(``Task.draw``: boxes with class names, class overlays with a legend, depth with a scale bar in
metres, normals as RGB). A task the sample lacks shows the plain image captioned "no <task>".
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from adperception.data import formats
from adperception.data.drawing import Style
from adperception.tasks.base import get_task, task_names, tasks_in_order


def draw_sample(
    sample: dict, *, metainfo: Mapping, tasks: Sequence[str] | None = None
) -> np.ndarray:
    """uint8 RGB panel of a raw or augmented (unpacked) sample of H×W pixels: ⌈T/2⌉ rows of two
    tiles for the T ``tasks`` (default: every registered task), blank after an odd last one.

    ``metainfo`` is a dataset's: class names under each task's ``class_key`` and colours
    (``palette`` for segmentation).
    """
    img = np.ascontiguousarray(sample["img"], dtype=np.uint8)
    style = Style(img.shape[:2])
    names = task_names() if tasks is None else tasks_in_order(tasks)
    tiles = [get_task(name).draw(img, sample, metainfo, style) for name in names]
    if len(tiles) % 2:
        tiles.append(np.zeros_like(img))
    rows = [np.hstack(tiles[i : i + 2]) for i in range(0, len(tiles), 2)]
    return np.vstack(rows)


def sample_stem(img_path: str) -> str:
    """File stem of a sample: ``aachen_000000_000019`` for a Cityscapes image, ``7`` for NYUv2."""
    stem = os.path.splitext(os.path.basename(img_path))[0]
    image_tag = os.path.splitext(formats.IMAGE_SUFFIX)[0]
    return stem[: -len(image_tag)] if stem.endswith(image_tag) else stem
