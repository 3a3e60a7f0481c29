"""Writes rendered frames in the Cityscapes layout (plus ``normals/``, and the drivable-area and
lane masks in BDD100K's encoding under the folders their tasks declare: ``Task.layout_files``),
one sample at a time.

Every file is written atomically and the image goes last: readers list samples by their image,
so a run killed mid-sample leaves, at worst, partner files without an image, which no reader
takes for a sample and the next run overwrites.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from adperception.data.datasets.cityscapes import folders
from adperception.data.formats import (
    CAMERA_SUFFIX,
    DISPARITY_SUFFIX,
    FOLDERS,
    IMAGE_SUFFIX,
    INSTANCE_IDS_SUFFIX,
    LABEL_IDS_SUFFIX,
    NORMALS_SUFFIX,
    depth_to_disparity_png,
    encode_normals_png,
    write_bytes_atomic,
    write_png,
)
from adperception.data.synth.camera import Camera
from adperception.data.synth.render import Frame
from adperception.tasks.base import layout_files

CITY = "synthdrive"


def sample_stem(index: int, city: str = CITY) -> str:
    """Cityscapes-style stem ``{city}_{sequence:06d}_{frame:06d}``; frame 19 is the labelled one."""
    return f"{city}_{index:06d}_000019"


#: Frame field → the layout file (``Task.layout_files`` key) it is written to, as is.
TASK_FILES = {"drivable": "drivable_path", "lanes": "lane_path"}


def suffixes() -> tuple[str, ...]:
    """Every file suffix of a sample, the image's last."""
    extra = tuple(layout_files()[key][1].suffix for key in TASK_FILES.values())
    return (*(s for s in FOLDERS if s != IMAGE_SUFFIX), *extra, IMAGE_SUFFIX)


def sample_path(root: str | os.PathLike, split: str, stem: str, suffix: str) -> Path:
    city = stem.rsplit("_", 2)[0]
    return Path(root) / folders()[suffix] / split / city / f"{stem}{suffix}"


def write_sample(
    root: str | os.PathLike, split: str, stem: str, frame: Frame, camera: Camera
) -> None:
    """Writes every file of one sample; the image last (see the module docstring)."""
    for suffix in suffixes():
        sample_path(root, split, stem, suffix).parent.mkdir(parents=True, exist_ok=True)
    write_png(sample_path(root, split, stem, LABEL_IDS_SUFFIX), frame.label_ids)
    write_png(sample_path(root, split, stem, INSTANCE_IDS_SUFFIX), frame.instance_ids)
    write_png(
        sample_path(root, split, stem, DISPARITY_SUFFIX),
        depth_to_disparity_png(frame.depth, camera.baseline, camera.fx),
    )
    write_png(sample_path(root, split, stem, NORMALS_SUFFIX), encode_normals_png(frame.normals))
    write_bytes_atomic(
        sample_path(root, split, stem, CAMERA_SUFFIX),
        json.dumps(camera.to_json(), indent=2).encode(),
    )
    for field, key in TASK_FILES.items():
        write_png(
            sample_path(root, split, stem, layout_files()[key][1].suffix), getattr(frame, field)
        )
    write_png(sample_path(root, split, stem, IMAGE_SUFFIX), frame.image)
