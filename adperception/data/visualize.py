"""One picture per sample of the data contract, to see that every target lines up with the image.

A 2×2 grid of image-sized tiles: boxes with class names | segmentation overlay with a legend
// depth colour map with a scale bar in metres | normals as RGB. A task the sample lacks shows
the plain image captioned "no <task>".
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
from matplotlib import colormaps

from adperception.data import formats

IGNORE_INDEX = 255
SEG_ALPHA = 0.5
#: Box colour of detection class i: matplotlib's tab10, bright enough on dark street scenes.
BOX_COLOURS = tuple(tuple(round(255 * c) for c in rgb) for rgb in colormaps["tab10"].colors)
DEPTH_CMAP = "magma"
FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_sample(
    sample: dict,
    *,
    seg_classes: Sequence[str],
    det_classes: Sequence[str],
    palette: Sequence[Sequence[int]],
) -> np.ndarray:
    """uint8 2H×2W×3 RGB panel of a raw or augmented (unpacked) sample of H×W pixels.

    ``palette`` gives the colour of each segmentation class; boxes use ``BOX_COLOURS``.
    """
    img = np.ascontiguousarray(sample["img"], dtype=np.uint8)
    style = _Style(img.shape[:2])
    tiles = [
        _boxes_tile(img, sample, det_classes, style),
        _seg_tile(img, sample, seg_classes, palette, style),
        _depth_tile(img, sample, style),
        _normals_tile(img, sample, style),
    ]
    return np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])


def sample_stem(img_path: str) -> str:
    """File stem of a sample: ``aachen_000000_000019`` for a Cityscapes image, ``7`` for NYUv2."""
    stem = os.path.splitext(os.path.basename(img_path))[0]
    image_tag = os.path.splitext(formats.IMAGE_SUFFIX)[0]
    return stem[: -len(image_tag)] if stem.endswith(image_tag) else stem


class _Style:
    """Text and line sizes that scale with the tile, readable from 256×512 to 1024×2048."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.scale = max(0.35, min(shape) / 700)
        self.thickness = max(1, round(self.scale * 1.5))
        self.line = max(1, round(min(shape) / 300))
        self.pad = max(2, round(4 * self.scale))
        (_, self.text_h), self.baseline = cv2.getTextSize("Ag", FONT, self.scale, self.thickness)
        self.row = self.text_h + self.baseline + 2 * self.pad


def _label(
    tile: np.ndarray,
    text: str,
    xy: tuple[int, int],
    style: _Style,
    background: Sequence[int] = (0, 0, 0),
) -> None:
    """Write ``text`` on a filled box whose top-left corner is ``xy``."""
    (w, _), _ = cv2.getTextSize(text, FONT, style.scale, style.thickness)
    x, y = xy
    cv2.rectangle(tile, (x, y), (x + w + 2 * style.pad, y + style.row - 1), tuple(background), -1)
    bright = np.dot(background, (0.299, 0.587, 0.114)) > 140
    colour = (0, 0, 0) if bright else (255, 255, 255)
    baseline_y = y + style.pad + style.text_h
    cv2.putText(
        tile, text, (x + style.pad, baseline_y), FONT, style.scale, colour, style.thickness,
        cv2.LINE_AA,
    )  # fmt: skip


def _absent(img: np.ndarray, task: str, style: _Style) -> np.ndarray:
    tile = img.copy()
    _label(tile, f"no {task}", (0, 0), style)
    return tile


def _boxes_tile(img, sample, det_classes, style) -> np.ndarray:
    if "gt_bboxes" not in sample:
        return _absent(img, "detection", style)
    tile = img.copy()
    boxes = np.asarray(sample["gt_bboxes"], dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(sample["gt_bboxes_labels"]).reshape(-1)
    for (x0, y0, x1, y1), label in zip(np.round(boxes).astype(int), labels, strict=True):
        colour = BOX_COLOURS[label % len(BOX_COLOURS)]
        # Pixel-edge boxes: the last covered column and row are x1 - 1 and y1 - 1.
        cv2.rectangle(tile, (x0, y0), (x1 - 1, y1 - 1), colour, style.line)
        _label(tile, det_classes[label], (x0, max(0, y0 - style.row)), style, colour)
    _label(tile, f"detection: {len(boxes)} boxes", (0, 0), style)
    return tile


def _seg_tile(img, sample, seg_classes, palette, style) -> np.ndarray:
    if "gt_seg_map" not in sample:
        return _absent(img, "segmentation", style)
    seg = np.asarray(sample["gt_seg_map"])
    colours = np.zeros((256, 3), np.float64)
    colours[: len(palette)] = palette
    labelled = (seg != IGNORE_INDEX)[..., None]
    blend = img * (1 - SEG_ALPHA) + colours[seg] * SEG_ALPHA
    tile = np.where(labelled, np.round(blend), img).astype(np.uint8)
    _label(tile, "segmentation", (0, 0), style)
    ids, counts = np.unique(seg[seg != IGNORE_INDEX], return_counts=True)
    max_rows = max(1, tile.shape[0] // style.row - 2)
    for row, class_id in enumerate(ids[np.argsort(-counts, kind="stable")][:max_rows], start=1):
        name = seg_classes[class_id] if class_id < len(seg_classes) else str(class_id)
        _label(tile, name, (0, row * style.row), style, tuple(int(c) for c in colours[class_id]))
    return tile


def _depth_tile(img, sample, style) -> np.ndarray:
    if "gt_depth_map" not in sample:
        return _absent(img, "depth", style)
    depth = np.asarray(sample["gt_depth_map"], dtype=np.float64)
    if depth.shape != img.shape[:2]:  # a test sample's depth is at its original size
        depth = cv2.resize(depth, img.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    valid = depth > 0
    tile = np.zeros_like(img)
    if not valid.any():
        _label(tile, "depth: no valid pixel", (0, 0), style)
        return tile
    near, far = np.percentile(depth[valid], [1, 99])
    far = max(far, near * 1.01)
    cmap = colormaps[DEPTH_CMAP]

    def colour(d: np.ndarray) -> np.ndarray:
        """Log depth, near bright and far dark."""
        t = np.clip(np.log(d / near) / np.log(far / near), 0, 1)
        return np.round(cmap(1 - t)[..., :3] * 255).astype(np.uint8)

    tile[valid] = colour(depth[valid])
    _label(tile, "depth (log scale)", (0, 0), style)
    _scale_bar(tile, near, far, colour, style)
    return tile


def _scale_bar(tile, near: float, far: float, colour, style: _Style) -> None:
    """A vertical bar at the right edge, near at the top, with ticks in metres."""
    h, w = tile.shape[:2]
    bar_w = max(4, w // 60)
    top, bottom = style.row + style.pad, h - style.row
    if bottom - top < 3 * style.row:
        return
    x1 = w - style.pad
    x0 = x1 - bar_w
    values = near * (far / near) ** np.linspace(0, 1, bottom - top)
    tile[top:bottom, x0:x1] = colour(values)[:, None, :]
    cv2.rectangle(tile, (x0 - 1, top - 1), (x1, bottom), (255, 255, 255), 1)
    for d in (near, np.sqrt(near * far), far):
        y = top + round(np.log(d / near) / np.log(far / near) * (bottom - top - 1))
        text = f"{d:.3g} m"
        (text_w, _), _ = cv2.getTextSize(text, FONT, style.scale, style.thickness)
        cv2.line(tile, (x0 - style.pad, y), (x0 - 1, y), (255, 255, 255), 1)
        y_label = min(max(0, y - style.row // 2), h - style.row)
        _label(tile, text, (x0 - 2 * style.pad - text_w - 2 * style.pad, y_label), style)


def _normals_tile(img, sample, style) -> np.ndarray:
    if "gt_normals_map" not in sample:
        return _absent(img, "normals", style)
    normals = np.asarray(sample["gt_normals_map"], dtype=np.float64)
    valid = np.any(normals != 0, axis=-1, keepdims=True)
    tile = np.where(valid, np.round((normals + 1) / 2 * 255), 0).astype(np.uint8)
    _label(tile, "normals: RGB = (n + 1) / 2", (0, 0), style)
    return tile
