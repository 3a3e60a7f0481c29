"""On-disk encodings of the Cityscapes layout, shared by the SynthDrive writer and the reader.

Cityscapes (https://github.com/mcordts/cityscapesScripts, README "Dataset Structure"):
- disparity PNG, uint16: p > 0 encodes d = (p - 1) / 256 pixels, p = 0 is invalid;
  depth = baseline * fx / d with the baseline (m) and fx (px) of the sample's camera json.
- instanceIds PNG: value >= 1000 is ``label_id * 1000 + k``; below 1000 it is a plain label id.
Ours: ``*_normals.png`` is a 16-bit RGB PNG, channel = round((n + 1) / 2 * 65535) for a unit
normal n in the camera frame (x right, y down, z forward); (0, 0, 0) marks invalid pixels
(no unit vector encodes to it). Readers refuse a valid pixel whose decoded norm is further from 1
than the quantisation allows (``NORMALS_NORM_TOLERANCE``) instead of renormalising it. A map of
only (0, 0, 0) is well-formed, a sample without valid normals (readers return all-zero normals,
which the loss skips); the checker reports it all the same, since a writer that lost its normals
leaves exactly that.

Every ``*.png`` must be a PNG by content (its signature), not only by name: a JPEG under a PNG
name decodes, but lossily, so label ids and codes would silently change.
"""

from __future__ import annotations

import math
import os

import cv2
import numpy as np

from adperception.errors import UserError

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_IDS_SUFFIX = "_gtFine_instanceIds.png"
DISPARITY_SUFFIX = "_disparity.png"
CAMERA_SUFFIX = "_camera.json"
NORMALS_SUFFIX = "_normals.png"

#: Folder of each file kind under the dataset root, then ``{split}/{city}/``.
FOLDERS = {
    IMAGE_SUFFIX: "leftImg8bit",
    LABEL_IDS_SUFFIX: "gtFine",
    INSTANCE_IDS_SUFFIX: "gtFine",
    DISPARITY_SUFFIX: "disparity",
    CAMERA_SUFFIX: "camera",
    NORMALS_SUFFIX: "normals",
}

INSTANCE_OFFSET = 1000
NORMALS_SCALE = 65535.0
#: Largest |norm - 1| of a valid decoded normals pixel: sqrt(3) code steps of 2 / 65535. Rounding
#: moves each channel by at most half a step, so a unit normal decodes within sqrt(3) / 65535
#: (2.6e-5) of unit length; twice that also admits a writer that truncates instead of rounding,
#: and still refuses coarser normals, e.g. 8-bit ones scaled up (up to sqrt(3) / 255 = 6.8e-3).
NORMALS_NORM_TOLERANCE = 2.0 * math.sqrt(3.0) / NORMALS_SCALE
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"


def depth_to_disparity_png(depth: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Encode metric depth (0 = invalid) as a Cityscapes disparity map (uint16).

    Disparities that do not fit the 16-bit code (too near) and invalid depth become 0.
    """
    depth = np.asarray(depth, dtype=np.float64)
    valid = depth > 0
    disparity = np.zeros_like(depth)
    disparity[valid] = baseline * fx / depth[valid]
    code = np.round(disparity * 256.0) + 1.0
    code[~valid | (code > 65535) | (code < 2)] = 0
    return code.astype(np.uint16)


def disparity_png_to_depth(code: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Decode a Cityscapes disparity map to float32 metric depth, 0 where invalid."""
    code = np.asarray(code, dtype=np.float64)
    disparity = (code - 1.0) / 256.0
    depth = np.zeros(code.shape, dtype=np.float32)
    valid = disparity > 0
    depth[valid] = baseline * fx / disparity[valid]
    return depth


def encode_normals_png(normals: np.ndarray) -> np.ndarray:
    """Encode H×W×3 unit normals (all-zero = invalid) as uint16 RGB."""
    normals = np.asarray(normals, dtype=np.float32)  # float32 resolves 1/65535 steps exactly
    code = np.round((np.clip(normals, -1.0, 1.0) + 1.0) * np.float32(0.5 * NORMALS_SCALE))
    code[~np.any(normals != 0, axis=-1)] = 0
    return code.astype(np.uint16)


def normals_norm_error(code: np.ndarray) -> np.ndarray:
    """H×W float64 |norm - 1| of each pixel's decoded (not renormalised) normal, 0 where invalid.

    A valid pixel above ``NORMALS_NORM_TOLERANCE`` does not encode a unit normal.
    """
    code = np.asarray(code)
    norm = np.linalg.norm(code.astype(np.float64) / NORMALS_SCALE * 2.0 - 1.0, axis=-1)
    return np.where(np.any(code != 0, axis=-1), np.abs(norm - 1.0), 0.0)


def decode_normals_png(code: np.ndarray) -> np.ndarray:
    """Decode uint16 RGB to float32 unit normals; (0, 0, 0) pixels decode to all-zero.

    Decoded normals are renormalised, which moves them by at most the quantisation; codes of
    non-unit normals are refused by the readers beforehand (``normals_norm_error``).
    """
    code = np.asarray(code)
    normals = code.astype(np.float64) / NORMALS_SCALE * 2.0 - 1.0
    norm = np.linalg.norm(normals, axis=-1, keepdims=True)
    valid = np.any(code != 0, axis=-1, keepdims=True) & (norm > 0)
    return np.where(valid, normals / np.where(norm > 0, norm, 1.0), 0.0).astype(np.float32)


class DataFileError(UserError, ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file."""


def check_size(path: str, array: np.ndarray, image_shape: tuple[int, int] | None) -> None:
    """Raise ``DataFileError`` when a decoded map's H×W differs from the image's."""
    if image_shape is not None and tuple(array.shape[:2]) != tuple(image_shape):
        h, w = array.shape[:2]
        raise DataFileError(
            f"{path}: size {h}x{w} differs from the image's {image_shape[0]}x{image_shape[1]}"
        )


def read_png(path: str | os.PathLike, *, channels: int, dtype: type[np.integer]) -> np.ndarray:
    """Read a PNG as H×W (channels=1) or H×W×3 RGB array of exactly ``dtype``.

    Raises ``DataFileError`` naming the file when it is missing, empty, not a PNG by its
    signature (e.g. a JPEG named .png), truncated, or not of the expected channel count or bit
    depth (e.g. an 8-bit disparity map). An RGBA file passes as RGB only when its alpha is
    opaque everywhere, since only then does dropping it lose nothing.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataFileError(f"{path}: file is missing")
    with open(path, "rb") as f:
        head = f.read(len(PNG_SIGNATURE))
    if not head:
        raise DataFileError(f"{path}: empty file (0 bytes)")
    if head != PNG_SIGNATURE:
        if head.startswith(JPEG_SOI):
            found = "JPEG (lossy), not PNG as its name says"
        else:
            found = f"not PNG (no PNG signature: it starts with {head!r})"
        raise DataFileError(f"{path}: content is {found}; write the original data as PNG")
    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise DataFileError(f"{path}: cannot be decoded as PNG (truncated or corrupt)")
    got_channels = 1 if array.ndim == 2 else array.shape[2]
    if got_channels == 4 and channels == 3:
        translucent = int((array[..., 3] != np.iinfo(array.dtype).max).sum())
        if translucent:
            raise DataFileError(
                f"{path}: RGBA with {translucent} non-opaque pixel(s); expected RGB, and "
                "dropping the alpha channel would lose it"
            )
        array, got_channels = array[..., :3], 3
    if got_channels != channels:
        raise DataFileError(f"{path}: expected {channels} channel(s), found {got_channels}")
    if array.dtype != dtype:
        raise DataFileError(f"{path}: expected {np.dtype(dtype).name} pixels, found {array.dtype}")
    if channels == 3:
        array = np.ascontiguousarray(array[..., ::-1])
    return array


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an H×W or H×W×3 RGB array (uint8 or uint16) as PNG, atomically.

    The file appears under its final name only once complete, so a killed writer never leaves
    a truncated PNG that a reader would take for data.
    """
    path = os.fspath(path)
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., ::-1])
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    write_bytes_atomic(path, buffer.tobytes())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then rename it over ``path``."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
