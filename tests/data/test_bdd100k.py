"""The BDD100K reader and checker against a tiny tree written from the format's documentation."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adperception.data import bdd100k_format
from adperception.data.check import Problem, check_dataset, dataset_cfgs
from adperception.data.datasets import BDD100KMTL
from adperception.data.formats import DataFileError
from adperception.registry import DATASETS
from tests.data import bdd100k_fixtures as bdd
from tests.data.bdd100k_fixtures import H, W
from tests.tools_for_tests import load_tool

REPO = Path(__file__).resolve().parents[2]
IMAGE_KEYS = {"img", "img_path", "sample_idx", "ori_shape", "img_shape"}


def build(root: Path, split: str = "train") -> BDD100KMTL:
    return DATASETS.build(dict(type="BDD100KMTL", data_root=str(root), split=split))


def read_all(root: Path) -> list[dict]:
    dataset = build(root)
    return [dataset.get_raw_sample(i) for i in range(len(dataset))]


def test_targets_follow_the_documented_encodings(tmp_path: Path) -> None:
    files = bdd.write_bdd100k_tree(tmp_path)
    dataset = build(tmp_path)
    assert dataset.tasks == ("det", "drivable", "lanes", "seg")
    assert len(dataset) == 3  # the 10K-only sem_seg mask is no sample
    a = dataset.get_raw_sample(0)
    assert a["img_path"] == files["image_a"]
    assert a["img"].dtype == np.uint8 and a["img"].shape == (H, W, 3)
    assert a["img"].flags.writeable  # transforms may work in place
    np.testing.assert_array_equal(a["img"], np.asarray(Image.open(files["image_a"])))
    assert np.abs(a["img"].astype(int) - bdd.image(0)).max() <= 8  # JPEG is lossy; RGB order
    assert a["ori_shape"] == a["img_shape"] == (H, W)
    assert a["gt_bboxes"].dtype == np.float32 and a["gt_bboxes_labels"].dtype == np.int64
    np.testing.assert_array_equal(a["gt_bboxes"], bdd.EXPECTED_BOXES_A)
    np.testing.assert_array_equal(a["gt_bboxes_labels"], bdd.EXPECTED_LABELS_A)
    for key, expected in [
        ("gt_drivable_map", bdd.drivable_mask()),
        ("gt_lane_map", bdd.expected_lane_map()),
        ("gt_seg_map", bdd.seg_mask()),
    ]:
        assert a[key].dtype == np.int64 and a[key].shape == (H, W), key
        np.testing.assert_array_equal(a[key], expected, err_msg=key)
    assert set(np.unique(a["gt_drivable_map"])) == {0, 1, 2}
    assert set(np.unique(a["gt_lane_map"])) == {0, 2, 5, 6, 8, 9}
    assert set(np.unique(a["gt_seg_map"])) == set(range(19)) | {255}


def test_partial_labels_leave_out_the_keys_a_sample_lacks(tmp_path: Path) -> None:
    bdd.write_bdd100k_tree(tmp_path)
    _, b, c = read_all(tmp_path)
    assert set(b) == IMAGE_KEYS | {
        "gt_bboxes",
        "gt_bboxes_labels",
        "gt_drivable_map",
        "gt_lane_map",
    }
    assert b["gt_bboxes"].shape == (0, 4) and b["gt_bboxes_labels"].shape == (0,)  # labels: null
    assert (b["gt_drivable_map"] == 2).all() and (b["gt_lane_map"] == 0).all()
    assert set(c) == IMAGE_KEYS  # no label file at all: still a sample, for unlabeled use


def test_split_of_images_only_has_no_tasks(tmp_path: Path) -> None:
    image = os.path.join(bdd.paths(tmp_path, "test")["image_dir"], bdd.STEM_A + ".jpg")
    bdd.write_jpeg(image, bdd.image(0))
    dataset = build(tmp_path, split="test")
    assert dataset.tasks == ()
    assert set(dataset.get_raw_sample(0)) == IMAGE_KEYS
    with pytest.raises(DataFileError, match=r"images/100k/val: the split 'val' image folder"):
        build(tmp_path, split="val")


def test_lane_fields_decode_each_documented_bit() -> None:
    fields = bdd100k_format.decode_lane_mask(bdd.lane_mask())
    painted = np.zeros((H, W), bool)
    for code, rows, cols, _, (direction, style, category) in bdd.LANE_PAINT:
        assert (fields.background[rows, cols] == ((code & 0b1000) != 0)).all(), code
        assert (fields.direction[rows, cols] == direction).all(), code
        assert (fields.style[rows, cols] == style).all(), code
        assert (fields.category[rows, cols] == category).all(), code
        painted[rows, cols] = True
    # the writer's 255 background: each sub-task's "background" class of format.rst
    assert fields.background[~painted].all()
    assert (fields.direction[~painted] == 2).all() and (fields.style[~painted] == 2).all()
    assert (fields.category[~painted] == 8).all()
    assert all(f.dtype == np.int64 for f in fields[1:]) and fields.background.dtype == bool


def test_metainfo_names_the_documented_classes() -> None:
    meta = BDD100KMTL.METAINFO
    assert meta["det_classes"] == (
        "pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
        "traffic light", "traffic sign",
    )  # fmt: skip
    assert meta["drivable_classes"] == ("direct", "alternative", "background")
    assert meta["lane_classes"] == (
        "crosswalk", "double other", "double white", "double yellow", "road curb",
        "single other", "single white", "single yellow",
    )  # fmt: skip
    assert meta["classes"] == (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle",
    )  # fmt: skip
    assert len(meta["palette"]) == 19


def _edit_frames(files: dict[str, str], edit: Callable[[list], object]) -> None:
    with open(files["det"], encoding="utf-8") as f:
        frames = json.load(f)
    bdd.write_json(files["det"], edit(frames))


def _set_box(frames: list, **box2d: object) -> list:
    frames[0]["labels"][0]["box2d"].update(box2d)
    return frames


def _painted(mask: np.ndarray, value: int) -> np.ndarray:
    mask = mask.copy()
    mask[5, 7] = value
    return mask


def _truncate(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _plant(files: dict[str, str], case: str) -> tuple[str, str]:
    """Break one file of the tree: (the file a message must name, a fragment of it)."""
    det, frame_a = files["det"], f"frame 0 ('{bdd.STEM_A}.jpg')"
    if case == "json not JSON":
        with open(det, "w") as f:
            f.write('[{"name": ')
        return det, "not valid JSON"
    if case == "json not a list":
        _edit_frames(files, lambda frames: {"frames": frames})
        return det, "expected a JSON list of frames, found dict"
    if case == "frame without name":
        _edit_frames(files, lambda frames: [*frames, {"labels": []}])
        return det, "frame 2 has no 'name'"
    if case == "frame naming a missing image":
        _edit_frames(files, lambda frames: [*frames, bdd.frame("0000f77c-6257be58.jpg", [])])
        missing = os.path.join(os.path.dirname(files["image_a"]), "0000f77c-6257be58.jpg")
        return det, f"frame 2 ('0000f77c-6257be58.jpg') names {missing}, which does not exist"
    if case == "repeated frame":
        _edit_frames(files, lambda frames: [*frames, frames[1]])
        return det, f"frame 2 ('{bdd.STEM_B}.jpg') repeats an earlier one"
    if case == "box x2 < x1":
        _edit_frames(files, lambda frames: _set_box(frames, x2=1.5))
        return det, f"{frame_a}, label 0: box2d has x2 < x1 or y2 < y1 (2.0, 3.0, 1.5, 8.0)"
    if case == "box outside the image":
        _edit_frames(files, lambda frames: _set_box(frames, x2=45))
        return det, f"frame '{bdd.STEM_A}.jpg': 1 box(es) outside the {H}x{W} image"
    if case == "box not a number":
        _edit_frames(files, lambda frames: _set_box(frames, y1="3"))
        return det, f"{frame_a}, label 0: box2d.y1 must be a number, found '3'"
    if case == "unknown category":
        dog = {"category": "dog", "box2d": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}}
        _edit_frames(files, lambda frames: [frames[0], bdd.frame(f"{bdd.STEM_B}.jpg", [dog])])
        return det, f"frame 1 ('{bdd.STEM_B}.jpg'), label 0: unknown category 'dog'"
    if case == "drivable value":
        bdd.write_png(files["drivable_a"], _painted(bdd.drivable_mask(), 3))
        return files["drivable_a"], "values [3] are outside the drivable encoding (0, 1, 2)"
    if case == "lane unused bits":
        # a solid parallel road curb (4) with bit 6 set: 0b01000100 = 68
        bdd.write_png(files["lane_a"], _painted(bdd.lane_mask(), 0b01000100))
        return files["lane_a"], "values [68] are outside the lane encoding"
    if case == "seg value":
        bdd.write_png(files["seg_a"], _painted(bdd.seg_mask(), 19))
        return files["seg_a"], "values [19] are outside the train ids 0..18 and 255"
    if case == "mask size":
        bdd.write_png(files["lane_b"], np.full((H + 1, W), 255, np.uint8))
        return files["lane_b"], f"size {H + 1}x{W} differs from the image's {H}x{W}"
    if case == "mask not 8-bit":
        bdd.write_png(files["drivable_b"], np.full((H, W), 2, np.uint16))
        return files["drivable_b"], "expected uint8 pixels, found uint16"
    if case == "truncated image":
        _truncate(files["image_b"])
        return files["image_b"], "cannot be decoded as JPEG (truncated or corrupt"
    if case == "png named jpg":
        Image.fromarray(bdd.image(2)).save(files["image_c"], format="PNG")
        return files["image_c"], "content is PNG, not JPEG as its name says"
    raise AssertionError(case)


CASES = (
    "json not JSON",
    "json not a list",
    "frame without name",
    "frame naming a missing image",
    "repeated frame",
    "box x2 < x1",
    "box outside the image",
    "box not a number",
    "unknown category",
    "drivable value",
    "lane unused bits",
    "seg value",
    "mask size",
    "mask not 8-bit",
    "truncated image",
    "png named jpg",
)


@pytest.mark.parametrize("case", CASES)
def test_each_malformed_file_is_an_error_naming_it(tmp_path: Path, case: str) -> None:
    path, fragment = _plant(bdd.write_bdd100k_tree(tmp_path), case)
    with pytest.raises(DataFileError) as err:
        read_all(tmp_path)
    assert str(err.value).startswith(f"{path}: ") and fragment in str(err.value)
    problems = check_dataset(str(tmp_path))
    assert [p.path for p in problems] == [path] and fragment in problems[0].message, problems


def test_boxes_at_the_image_edge_are_clipped_not_refused(tmp_path: Path) -> None:
    files = bdd.write_bdd100k_tree(tmp_path)
    # x2 = W, y2 = H: the image's far edges, as a tool writing edge coordinates puts them
    _edit_frames(files, lambda frames: _set_box(frames, x1=0, y1=0, x2=W, y2=H))
    boxes = read_all(tmp_path)[0]["gt_bboxes"]
    np.testing.assert_array_equal(boxes[0], [0, 0, W, H])
    assert check_dataset(str(tmp_path)) == []


def test_checker_lists_every_bad_frame_and_orphan_mask(tmp_path: Path) -> None:
    files = bdd.write_bdd100k_tree(tmp_path)
    orphan = os.path.join(os.path.dirname(files["drivable_a"]), "0000f77c-6257be58.png")
    bdd.write_png(orphan, bdd.drivable_mask())
    image = os.path.join(os.path.dirname(files["image_a"]), "0000f77c-6257be58.jpg")
    assert len(build(tmp_path)) == 3  # the reader ignores the orphan mask
    _edit_frames(files, lambda frames: [frames[0], {"name": ""}, {"labels": None}, frames[1]])
    assert sorted(check_dataset(str(tmp_path)), key=str) == sorted(
        [
            Problem(files["det"], "frame 1 has no 'name' (the image file name)"),
            Problem(files["det"], "frame 2 has no 'name' (the image file name)"),
            Problem(image, f"image is missing, but {orphan} exist(s)"),
        ],
        key=str,
    )


def test_cli_names_each_bad_file_and_passes_a_clean_tree(tmp_path: Path, capsys) -> None:
    main = load_tool("check_dataset").main
    bdd.write_bdd100k_tree(tmp_path / "good")
    assert main([str(tmp_path / "good")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "checked 3 sample(s): 0 problem(s), 0 warning(s)"
    ]
    files = bdd.write_bdd100k_tree(tmp_path / "bad")
    planted = dict(_plant(files, case) for case in ("unknown category", "seg value", "mask size"))
    assert main([str(tmp_path / "bad"), "--splits", "train"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"checked 3 sample(s): {len(planted)} problem(s), 0 warning(s)"
    assert sorted(line.split(": ", 1)[0] for line in lines[:-1]) == sorted(planted)
    for line in lines[:-1]:
        path, message = line.split(": ", 1)
        assert planted[path] in message, line


def test_checker_reads_the_splits_of_the_config(tmp_path: Path) -> None:
    config = tmp_path / "cfg.py"
    config.write_text(
        f"_base_ = ['{REPO}/configs/_base_/datasets/bdd100k.py']\n"
        f"data_root = '{tmp_path / 'data'}'\n"
        "train_dataloader = dict(dataset=dict(data_root=data_root))\n"
        "val_dataloader = dict(dataset=dict(data_root=data_root))\n"
        "test_dataloader = val_dataloader\n"
    )
    assert [(d["type"], d["split"]) for d in dataset_cfgs(str(config))] == [
        ("BDD100KMTL", "train"),
        ("BDD100KMTL", "val"),
    ]
    bdd.write_bdd100k_tree(tmp_path / "data", split="train")
    bdd.write_bdd100k_tree(tmp_path / "data", split="val")
    assert check_dataset(str(config)) == []
