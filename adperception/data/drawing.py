"""Drawing primitives that the tasks' tiles share: text sizes that scale with the tile, captions
on filled boxes, the "no <task>" tile and a log-scale colour bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
from matplotlib import colormaps

#: Box colour of detection class i: matplotlib's tab10, bright enough on dark street scenes.
BOX_COLOURS = tuple(tuple(round(255 * c) for c in rgb) for rgb in colormaps["tab10"].colors)
FONT = cv2.FONT_HERSHEY_SIMPLEX


class Style:
    """Text and line sizes that scale with the tile, readable from 256×512 to 1024×2048."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.scale = max(0.35, min(shape) / 700)
        self.thickness = max(1, round(self.scale * 1.5))
        self.line = max(1, round(min(shape) / 300))
        self.pad = max(2, round(4 * self.scale))
        (_, self.text_h), self.baseline = cv2.getTextSize("Ag", FONT, self.scale, self.thickness)
        self.row = self.text_h + self.baseline + 2 * self.pad


def label(
    tile: np.ndarray,
    text: str,
    xy: tuple[int, int],
    style: Style,
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


def absent(img: np.ndarray, what: str, style: Style) -> np.ndarray:
    """The plain image captioned "no <what>": the tile of a task the sample lacks."""
    tile = img.copy()
    label(tile, f"no {what}", (0, 0), style)
    return tile


def overlay(
    img: np.ndarray,
    ids: np.ndarray,
    palette: Sequence[Sequence[int]],
    names: Sequence[str],
    title: str,
    style: Style,
    *,
    ignore_index: int = 255,
    alpha: float = 0.5,
) -> np.ndarray:
    """Class ids blended over the image at ``alpha`` (ignored pixels left as they are), titled,
    with a legend of the present classes, most frequent first."""
    colours = np.zeros((256, 3), np.float64)
    colours[: len(palette)] = palette
    labelled = (ids != ignore_index)[..., None]
    blend = img * (1 - alpha) + colours[ids] * alpha
    tile = np.where(labelled, np.round(blend), img).astype(np.uint8)
    label(tile, title, (0, 0), style)
    present, counts = np.unique(ids[ids != ignore_index], return_counts=True)
    max_rows = max(1, tile.shape[0] // style.row - 2)
    for row, class_id in enumerate(present[np.argsort(-counts, kind="stable")][:max_rows], 1):
        name = names[class_id] if class_id < len(names) else str(class_id)
        label(tile, name, (0, row * style.row), style, tuple(int(c) for c in colours[class_id]))
    return tile


def scale_bar(
    tile: np.ndarray,
    near: float,
    far: float,
    colour: Callable[[np.ndarray], np.ndarray],
    style: Style,
    unit: str,
) -> None:
    """A vertical log-scale bar at the right edge, ``near`` at the top, with ticks in ``unit``."""
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
        text = f"{d:.3g} {unit}"
        (text_w, _), _ = cv2.getTextSize(text, FONT, style.scale, style.thickness)
        cv2.line(tile, (x0 - style.pad, y), (x0 - 1, y), (255, 255, 255), 1)
        y_label = min(max(0, y - style.row // 2), h - style.row)
        label(tile, text, (x0 - 2 * style.pad - text_w - 2 * style.pad, y_label), style)
