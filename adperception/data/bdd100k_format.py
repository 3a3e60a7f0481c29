"""BDD100K's mask encodings (https://doc.bdd100k.com/format.html; bdd100k's ``label/label.py``,
``label/to_mask.py`` and ``eval/lane.py``), shared by the BDD100K reader, the tasks that train on
them and the SynthDrive writer, which writes them.

- drivable mask: 0 = direct, 1 = alternative, 2 = background.
- lane mask: one byte per pixel, ``- - d s b c c c`` from the high bit down: bit 5 direction
  (0 parallel, 1 vertical), bit 4 style (0 solid, 1 dashed), bit 3 background (1 = no lane),
  bits 0-2 the category index into ``LANE_CLASSES``; bits 6-7 are unused (the writer leaves them
  0 on lane pixels and writes 255 on the background).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from adperception.data.formats import DataFileError, check_size, read_png

DRIVABLE_CLASSES = ("direct", "alternative", "background")
LANE_CLASSES = (
    "crosswalk",
    "double other",
    "double white",
    "double yellow",
    "road curb",
    "single other",
    "single white",
    "single yellow",
)
LANE_DIRECTIONS = ("parallel", "vertical")
LANE_STYLES = ("solid", "dashed")
LANE_CATEGORY_BITS = 0b00000111
LANE_BACKGROUND_BIT = 0b00001000
LANE_STYLE_BIT = 0b00010000
LANE_DIRECTION_BIT = 0b00100000
LANE_UNUSED_BITS = 0b11000000


class LaneFields(NamedTuple):
    """Per-pixel fields of a lane mask, int64 H×W each but ``background`` (bool). Background
    pixels hold each sub-task's "background" index of format.rst: direction 2, style 2,
    category 8."""

    background: np.ndarray
    direction: np.ndarray
    style: np.ndarray
    category: np.ndarray


def _values_error(path: str, values: np.ndarray, what: str) -> DataFileError:
    bad = np.unique(values)
    return DataFileError(f"{path}: values {bad[:10].tolist()} are outside {what}")


def read_drivable_mask(path: str, image_shape: tuple[int, int] | None) -> np.ndarray:
    """int64 H×W: 0 = direct, 1 = alternative, 2 = background."""
    code = read_png(path, channels=1, dtype=np.uint8)
    check_size(path, code, image_shape)
    bad = code >= len(DRIVABLE_CLASSES)
    if bad.any():
        raise _values_error(path, code[bad], "the drivable encoding (0, 1, 2)")
    return code.astype(np.int64)


def read_lane_mask(path: str, image_shape: tuple[int, int] | None) -> np.ndarray:
    """The raw uint8 lane code; lane pixels may not set the unused bits 6-7."""
    code = read_png(path, channels=1, dtype=np.uint8)
    check_size(path, code, image_shape)
    bad = ((code & LANE_BACKGROUND_BIT) == 0) & ((code & LANE_UNUSED_BITS) != 0)
    if bad.any():
        raise _values_error(
            path, code[bad], "the lane encoding (lane pixels with unused bits 6-7 set)"
        )
    return code


def decode_lane_mask(code: np.ndarray) -> LaneFields:
    """Split a lane code (see the module docstring) into its per-pixel fields."""
    code = np.asarray(code)
    background = (code & LANE_BACKGROUND_BIT) != 0

    def field(value: np.ndarray, background_index: int) -> np.ndarray:
        return np.where(background, background_index, value).astype(np.int64)

    return LaneFields(
        background=background,
        direction=field((code & LANE_DIRECTION_BIT) >> 5, len(LANE_DIRECTIONS)),
        style=field((code & LANE_STYLE_BIT) >> 4, len(LANE_STYLES)),
        category=field(code & LANE_CATEGORY_BITS, len(LANE_CLASSES)),
    )


def lane_map(fields: LaneFields) -> np.ndarray:
    """int64 H×W: 0 = no lane, 2 + LANE_CLASSES index on lane pixels (1 is a lane of no known
    category, what a lane / no-lane prediction holds)."""
    return np.where(fields.background, 0, fields.category + 2).astype(np.int64)
