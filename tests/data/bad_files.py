"""Files as a new user gets them wrong, in their real formats (written by PIL, not by us)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tests.data.fixtures import BASELINE, H, W


def write_jpeg(path: str, array: np.ndarray) -> None:
    """A real JPEG of an H×W or H×W×3 uint8 array, under whatever name ``path`` has."""
    Image.fromarray(array).save(path, format="JPEG")


def write_rgba(path: str, rgb: np.ndarray, alpha: np.ndarray) -> None:
    """An 8-bit RGBA PNG."""
    Image.fromarray(np.dstack([rgb, alpha])).save(path, format="PNG")


def two_class_label_ids() -> np.ndarray:
    """Road (7) | building (11), split inside JPEG's 8×8 blocks: the ringing around the edge
    stays within known label ids, so a JPEG of it decodes without an unknown id to catch while
    pixels change class."""
    return np.where(np.arange(W)[None, :] < 27, 7, 11).astype(np.uint8).repeat(H, axis=0)


def write_camera_text(path: str, camera: dict, *, baseline: str | None = None, **intrinsic) -> None:
    """``camera`` as JSON, with the baseline's literal text replaced (e.g. ``"1e999"``, which
    Python's json reads as infinity) and intrinsic values replaced."""
    camera = {**camera, "intrinsic": {**camera["intrinsic"], **intrinsic}}
    text = json.dumps(camera)
    if baseline is not None:
        text = text.replace(json.dumps(BASELINE), baseline)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
