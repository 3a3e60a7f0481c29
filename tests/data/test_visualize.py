"""The sample panel puts each target where it belongs, and the browse tool writes one per sample."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps

from adperception.data.drawing import BOX_COLOURS
from adperception.data.visualize import draw_sample, sample_stem
from tests.data import fixtures
from tests.data.fixtures import H, W

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("road", "car")
PALETTE = ((128, 64, 128), (0, 0, 142))
DET_CLASSES = ("person", "car")
META = {"classes": CLASSES, "palette": PALETTE, "det_classes": DET_CLASSES}
FOUR = ("det", "seg", "depth", "normals")


def full_sample(h: int = 96, w: int = 128) -> dict:
    rng = np.random.default_rng(0)
    seg = np.zeros((h, w), np.int64)
    seg[:, w // 2 :] = 1
    seg[h - 8 :, :8] = 255
    depth = np.linspace(2.0, 80.0, h * w, dtype=np.float32).reshape(h, w)
    depth[h // 2 :, 40:80] = 1.0  # 15 % of the pixels: the 1st percentile
    depth[h - 8 :, :8] = 0
    normals = np.zeros((h, w, 3), np.float32)
    normals[..., 1] = -1.0
    normals[h - 8 :, w - 8 :] = (0.28, 0.96, 0.0)
    normals[h - 4 :, :4] = 0
    return dict(
        img=rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8),
        gt_seg_map=seg,
        gt_depth_map=depth,
        gt_normals_map=normals,
        gt_bboxes=np.array([[60, 50, 100, 90]], np.float32),
        gt_bboxes_labels=np.array([1]),
    )


def tiles(panel: np.ndarray, h: int, w: int) -> list[np.ndarray]:
    return [panel[:h, :w], panel[:h, w:], panel[h:, :w], panel[h:, w:]]


def test_panel_tiles_show_each_target() -> None:
    sample = full_sample()
    img = sample["img"]
    panel = draw_sample(sample, metainfo=META, tasks=FOUR)
    assert panel.dtype == np.uint8 and panel.shape == (2 * 96, 2 * 128, 3)
    boxes, seg, depth, normals = tiles(panel, 96, 128)

    # The box covers columns 60..99 and rows 50..89: its outline lies on those pixels.
    for y, x in [(89, 60), (89, 99), (70, 99), (70, 60)]:
        assert tuple(boxes[y, x]) == BOX_COLOURS[1]
    assert tuple(boxes[70, 80]) == tuple(img[70, 80])

    blend = np.round(img[60, 100] * 0.5 + np.array(PALETTE[1]) * 0.5)
    np.testing.assert_array_equal(seg[60, 100], blend)
    np.testing.assert_array_equal(seg[94, 2], img[94, 2])  # ignore

    assert not depth[94, 2].any()  # invalid
    nearest = np.round(np.array(colormaps["magma"](1.0)[:3]) * 255)
    np.testing.assert_array_equal(depth[80, 60], nearest)

    np.testing.assert_array_equal(normals[60, 60], [128, 0, 128])  # (0, -1, 0)
    np.testing.assert_array_equal(normals[92, 124], [163, 250, 128])  # (0.28, 0.96, 0)
    assert not normals[94, 2].any()


def test_absent_tasks_show_the_image() -> None:
    img = full_sample()["img"]
    panel = draw_sample({"img": img}, metainfo=META, tasks=FOUR)
    for tile in tiles(panel, 96, 128):
        np.testing.assert_array_equal(tile[48:], img[48:])
        assert not np.array_equal(tile[:10, :40], img[:10, :40])  # the "no <task>" caption


def test_sample_stem() -> None:
    assert sample_stem("x/leftImg8bit/val/a/a_000000_000019_leftImg8bit.png") == "a_000000_000019"
    assert sample_stem("nyu/val/image/7.npy") == "7"


def test_browse_cli_writes_panels(tmp_path: Path) -> None:
    fixtures.write_cityscapes_tree(tmp_path / "data", split="train", num=3)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable, str(REPO / "tools" / "browse_dataset.py"), str(tmp_path / "data"),
            "--split", "train", "--num", "2", "--out-dir", str(out),
        ],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["aachen_000000_000000.png", "aachen_000000_000001.png"]
    for name in os.listdir(out):
        panel = cv2.imread(str(out / name))[..., ::-1]
        assert panel.shape == (2 * H, 2 * W, 3)
        # fixtures.EXPECTED_BOXES: a car over columns 20..32 and rows 14..19, a bicycle whose
        # bottom-right visible pixel is (29, 46).
        assert tuple(panel[19, 25]) == BOX_COLOURS[2]
        assert tuple(panel[29, 46]) == BOX_COLOURS[7]
