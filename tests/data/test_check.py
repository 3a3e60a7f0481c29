"""The dataset checker finds every planted problem once, and nothing on clean trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adperception.data import formats
from adperception.data.check import (
    Problem,
    check_dataset,
    collect_samples,
    dataset_cfgs,
    implausible_view,
)
from adperception.data.formats import DataFileError
from tests.data import bad_files, fixtures
from tests.data.fixtures import H, W

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "check_dataset.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def plant_problems(root: Path) -> dict[str, str]:
    """A Cityscapes tree with one problem in each of several files: path -> message fragment."""
    written = fixtures.write_cityscapes_tree(root, split="train", num=15)
    fixtures.write_cityscapes_tree(root, split="val", num=1)
    planted = {}

    path = written[0].paths[formats.IMAGE_SUFFIX]
    fixtures.truncate(path)
    planted[path] = "cannot be decoded"

    path = written[1].paths[formats.DISPARITY_SUFFIX]
    formats.write_png(path, np.full((H, W), 7, np.uint8))
    planted[path] = "expected uint16"

    path = written[2].paths[formats.CAMERA_SUFFIX]
    with open(path, "w") as f:
        json.dump({"extrinsic": {"x": 1.0}, "intrinsic": {"fx": 2000.0}}, f)
    planted[path] = "lacks extrinsic.baseline"

    path = written[3].paths[formats.LABEL_IDS_SUFFIX]
    formats.write_png(path, np.zeros((H + 1, W), np.uint8))
    planted[path] = f"size {H + 1}x{W} differs from the image's {H}x{W}"

    path = written[4].paths[formats.INSTANCE_IDS_SUFFIX]
    instance_ids = written[4].instance_ids.copy()
    instance_ids[0, 0] = 23001  # sky has no instances
    formats.write_png(path, instance_ids)
    planted[path] = "class ids [23]"

    path = written[5].paths[formats.NORMALS_SUFFIX]
    code = formats.encode_normals_png(written[5].normals)
    code[4, 4] = (65535, 65535, 65535)  # decodes to (1, 1, 1): not a unit vector
    formats.write_png(path, code)
    planted[path] = "1 valid pixel(s) do not encode unit normals"

    os.remove(written[6].paths[formats.CAMERA_SUFFIX])
    planted[written[6].paths[formats.CAMERA_SUFFIX]] = "_disparity.png needs it"

    os.remove(written[7].paths[formats.IMAGE_SUFFIX])
    planted[written[7].paths[formats.IMAGE_SUFFIX]] = "image is missing, but"

    path = written[8].paths[formats.LABEL_IDS_SUFFIX]
    open(path, "wb").close()
    planted[path] = "empty file (0 bytes)"

    path = written[9].paths[formats.IMAGE_SUFFIX]
    bad_files.write_jpeg(path, written[9].image)
    planted[path] = "content is JPEG (lossy), not PNG"

    path = written[10].paths[formats.LABEL_IDS_SUFFIX]
    bad_files.write_jpeg(path, bad_files.two_class_label_ids())
    planted[path] = "content is JPEG (lossy), not PNG"

    path = written[11].paths[formats.IMAGE_SUFFIX]
    bad_files.write_rgba(path, written[11].image, np.full((H, W), 0, np.uint8))
    planted[path] = f"RGBA with {H * W} non-opaque pixel(s)"

    path = written[12].paths[formats.NORMALS_SUFFIX]
    formats.write_png(path, np.zeros((H, W, 3), np.uint16))
    planted[path] = "no valid normals (every pixel is (0, 0, 0), marking invalid)"

    path = written[13].paths[formats.CAMERA_SUFFIX]
    bad_files.write_camera_text(path, written[13].camera, baseline="1e999")
    planted[path] = "baseline must be finite and positive, found inf"

    path = written[14].paths[formats.CAMERA_SUFFIX]
    bad_files.write_camera_text(path, written[14].camera, fx=True)
    planted[path] = "fx must be a number, found true"

    path = str(root / "leftImg8bit" / "test")
    os.makedirs(path)
    planted[path] = "split 'test' folder has no files of the dataset's layout"
    return planted


def test_checker_reports_each_planted_problem_once(tmp_path: Path) -> None:
    planted = plant_problems(tmp_path)
    problems = check_dataset(str(tmp_path))
    assert sorted(p.path for p in problems) == sorted(planted)
    for problem in problems:
        assert planted[problem.path] in problem.message, problem


def test_checker_finds_nothing_on_clean_trees(tmp_path: Path) -> None:
    fixtures.write_cityscapes_tree(tmp_path / "cityscapes", split="train")
    fixtures.write_cityscapes_tree(tmp_path / "cityscapes", split="test")
    fixtures.write_nyuv2_tree(tmp_path / "nyuv2", split="val")
    assert check_dataset(str(tmp_path / "cityscapes")) == []
    assert check_dataset(str(tmp_path / "nyuv2")) == []


def test_checker_on_nyuv2(tmp_path: Path) -> None:
    fixtures.write_nyuv2_tree(tmp_path, split="train", num=3)
    label = str(tmp_path / "train" / "label" / "0.npy")
    np.save(label, np.full((H, W), 20.0, np.float32))
    depth = str(tmp_path / "train" / "depth" / "1.npy")
    fixtures.truncate(depth)
    normal = str(tmp_path / "train" / "normal" / "2.npy")
    os.remove(normal)
    expected = {
        label: "label values must be 0..12 or -1, found [20.0]",
        depth: "not a readable .npy (truncated or corrupt",
        normal: "missing, while other samples of the split have one",
    }
    problems = check_dataset(str(tmp_path))
    assert sorted(p.path for p in problems) == sorted(expected)
    for problem in problems:
        assert expected[problem.path] in problem.message, problem


def test_checker_reads_the_datasets_of_a_config(tmp_path: Path) -> None:
    fixtures.write_cityscapes_tree(tmp_path / "data", split="train")
    fixtures.write_cityscapes_tree(tmp_path / "data", split="val", num=1)
    (written,) = fixtures.write_cityscapes_tree(tmp_path / "data", split="test", num=1)
    fixtures.truncate(written.paths[formats.DISPARITY_SUFFIX])
    config = tmp_path / "cfg.py"
    config.write_text(
        f"_base_ = ['{REPO}/configs/_base_/datasets/cityscapes.py']\n"
        f"data_root = '{tmp_path / 'data'}'\n"
        "train_dataloader = dict(dataset=dict(data_root=data_root))\n"
        "val_dataloader = dict(dataset=dict(data_root=data_root))\n"
        "test_dataloader = val_dataloader\n"
    )
    assert [(d["type"], d["split"]) for d in dataset_cfgs(str(config))] == [
        ("CityscapesMTL", "train"),
        ("CityscapesMTL", "val"),
    ]
    assert check_dataset(str(config)) == []
    assert check_dataset(str(tmp_path / "data"), splits=["test"]) == [
        Problem(
            written.paths[formats.DISPARITY_SUFFIX],
            "cannot be decoded as PNG (truncated or corrupt)",
        )
    ]


def test_checker_rejects_a_folder_of_no_known_layout(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="neither the Cityscapes layout"):
        check_dataset(str(tmp_path))


def test_cli_exit_status_and_output(tmp_path: Path) -> None:
    planted = plant_problems(tmp_path / "bad")
    result = run_cli(str(tmp_path / "bad"))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(line.split(": ")[0] for line in lines[:-1]) == sorted(planted)
    for line in lines[:-1]:
        path, message = line.split(": ", 1)
        assert planted[path] in message, line
    assert lines[-1] == f"checked 16 sample(s): {len(planted)} problem(s), 0 warning(s)"

    fixtures.write_cityscapes_tree(tmp_path / "good", split="val")
    result = run_cli(str(tmp_path / "good"), "--splits", "val")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["checked 2 sample(s): 0 problem(s), 0 warning(s)"]


def plant_implausible_views(root: Path) -> dict[str, str]:
    """A valid tree with a frame filled by one car and a frame almost without valid disparity:
    image path -> message fragment."""
    written = fixtures.write_cityscapes_tree(root, split="val", num=4)
    instance_ids = written[1].instance_ids.copy()
    instance_ids[:, : W * 3 // 4] = 26003  # the camera against a car
    formats.write_png(written[1].paths[formats.INSTANCE_IDS_SUFFIX], instance_ids)
    disparity = np.zeros((H, W), np.uint16)
    disparity[:2] = 300  # 2 of 32 rows valid
    formats.write_png(written[2].paths[formats.DISPARITY_SUFFIX], disparity)
    return {
        written[1].paths[
            formats.IMAGE_SUFFIX
        ]: "one car (instance 26003) covers 75.0% of the image",
        written[2].paths[formats.IMAGE_SUFFIX]: "disparity is valid on 6.2% of the pixels",
    }


def test_implausible_views_are_warnings_naming_the_frame(tmp_path: Path) -> None:
    planted = plant_implausible_views(tmp_path)
    assert check_dataset(str(tmp_path)) == []  # valid files: no error
    samples, _ = collect_samples(str(tmp_path))
    warnings = [w for sample in samples for w in implausible_view(sample)]
    assert sorted(w.path for w in warnings) == sorted(planted)
    for warning in warnings:
        assert planted[warning.path] in warning.message, warning

    result = run_cli(str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "checked 4 sample(s): 0 problem(s), 2 warning(s)"
    for line in lines[:-1]:
        path, message = line.split(": warning: implausible view: ", 1)
        assert planted[path] in message, line
