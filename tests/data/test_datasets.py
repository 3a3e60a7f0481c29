"""Dataset readers against independently stated decodings of tiny fixture trees."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label
from mmengine.config import Config

from adperception.data import formats
from adperception.data.datasets import CityscapesMTL, NYUv2MTL, SynthDrive, cityscapes
from adperception.data.formats import DataFileError
from adperception.registry import DATASETS
from tests.data import bad_files, fixtures
from tests.data.fixtures import BASELINE, FX, H, W

REPO = Path(__file__).resolve().parents[2]
HAS_TRANSFORMS = importlib.util.find_spec("adperception.data.transforms") is not None


def build(root: Path, split: str = "train", **kwargs) -> CityscapesMTL:
    return DATASETS.build(dict(type="CityscapesMTL", data_root=str(root), split=split, **kwargs))


def test_train_ids_follow_cityscapesscripts_on_every_pixel(tmp_path: Path) -> None:
    (written,) = fixtures.write_cityscapes_tree(tmp_path, num=1)
    seg = build(tmp_path).get_raw_sample(0)["gt_seg_map"]
    expected = np.array(
        [[id2label[int(v)].trainId for v in row] for row in written.label_ids], dtype=np.int64
    )
    expected[(expected < 0) | (expected == 255)] = 255
    assert seg.dtype == np.int64 and seg.shape == (H, W)
    np.testing.assert_array_equal(seg, expected)
    assert set(np.unique(written.label_ids)) == set(range(34))


def test_depth_is_baseline_fx_over_disparity(tmp_path: Path) -> None:
    (written,) = fixtures.write_cityscapes_tree(tmp_path, num=1)
    depth = build(tmp_path).get_raw_sample(0)["gt_depth_map"]
    p = written.disparity.astype(np.float64)
    valid = p > 0
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth[valid], BASELINE * FX / ((p[valid] - 1) / 256), rtol=1e-6)
    assert (depth[~valid] == 0).all() and (~valid).any()


def test_boxes_bound_the_visible_pixels_of_each_instance(tmp_path: Path) -> None:
    sample = fixtures.make_cityscapes_sample(0)
    value, rows, cols = fixtures.NON_INSTANCE_CLASS
    sample.instance_ids[rows, cols] = value
    fixtures.write_cityscapes_sample(tmp_path, "train", "aachen_000000_000000", sample)
    sample = build(tmp_path).get_raw_sample(0)
    assert sample["gt_bboxes"].dtype == np.float32 and sample["gt_bboxes_labels"].dtype == np.int64
    np.testing.assert_array_equal(sample["gt_bboxes"], fixtures.EXPECTED_BOXES)
    np.testing.assert_array_equal(sample["gt_bboxes_labels"], fixtures.EXPECTED_BOX_LABELS)


def test_all_zero_test_split_labels_read_as_ignore_without_boxes(tmp_path: Path) -> None:
    sample = fixtures.make_cityscapes_sample(0)
    sample.label_ids[:] = 0
    sample.instance_ids[:] = 0
    fixtures.write_cityscapes_sample(tmp_path, "test", "berlin_000000_000019", sample)
    raw = build(tmp_path, split="test").get_raw_sample(0)
    assert (raw["gt_seg_map"] == 255).all()
    assert raw["gt_bboxes"].shape == (0, 4) and raw["gt_bboxes_labels"].shape == (0,)


def test_normals_round_trip(tmp_path: Path) -> None:
    (written,) = fixtures.write_cityscapes_tree(tmp_path, num=1)
    normals = build(tmp_path).get_raw_sample(0)["gt_normals_map"]
    invalid = ~written.normals.any(axis=-1)
    assert normals.dtype == np.float32 and normals.shape == (H, W, 3)
    # One code step is 2 / 65535 per channel.
    np.testing.assert_allclose(normals[~invalid], written.normals[~invalid], atol=1e-4)
    assert (normals[invalid] == 0).all() and invalid.any()


def test_contract_keys_and_metadata(tmp_path: Path) -> None:
    written = fixtures.write_cityscapes_tree(tmp_path, num=2)
    dataset = build(tmp_path)
    sample = dataset.get_raw_sample(1)
    assert set(sample) == {
        "img", "img_path", "sample_idx", "ori_shape", "img_shape", "gt_seg_map", "gt_bboxes",
        "gt_bboxes_labels", "gt_depth_map", "gt_normals_map",
    }  # fmt: skip
    np.testing.assert_array_equal(sample["img"], written[1].image)
    assert sample["img_path"] == written[1].paths[formats.IMAGE_SUFFIX]
    assert sample["sample_idx"] == 1
    assert tuple(sample["ori_shape"]) == tuple(sample["img_shape"]) == (H, W)
    assert dataset.tasks == ("det", "seg", "depth", "normals")
    assert len(dataset.metainfo["classes"]) == 19 and dataset.metainfo["classes"][0] == "road"
    assert dataset.metainfo["palette"][0] == (128, 64, 128)
    assert dataset.metainfo["det_classes"][2] == "car"


def test_tasks_absent_when_folders_absent(tmp_path: Path) -> None:
    fixtures.write_cityscapes_tree(tmp_path, kinds=(formats.IMAGE_SUFFIX, formats.LABEL_IDS_SUFFIX))
    dataset = build(tmp_path)
    assert dataset.tasks == ("seg",)
    assert set(dataset.get_raw_sample(0)) == {
        "img", "img_path", "sample_idx", "ori_shape", "img_shape", "gt_seg_map"
    }  # fmt: skip


def test_pipeline_runs_on_a_copy(tmp_path: Path) -> None:
    fixtures.write_cityscapes_tree(tmp_path, num=1)

    def blank(sample: dict) -> dict:
        sample["img"][:] = 0
        sample["seen"] = True
        return sample

    dataset = build(tmp_path, pipeline=[blank])
    assert dataset[0]["seen"] and not dataset[0]["img"].any()
    assert dataset.get_raw_sample(0)["img"].any() and "seen" not in dataset.get_raw_sample(0)


@pytest.mark.skipif(not HAS_TRANSFORMS, reason="adperception.data.transforms not written yet")
def test_pipeline_of_registered_transforms(tmp_path: Path) -> None:
    fixtures.write_cityscapes_tree(tmp_path, num=1)
    pipeline = [dict(type="RandomFlip", prob=1.0), dict(type="PackMTLInputs")]
    dataset = build(tmp_path, pipeline=pipeline)
    packed = dataset[0]
    raw = dataset.get_raw_sample(0)
    np.testing.assert_array_equal(packed["inputs"].numpy(), raw["img"][:, ::-1].transpose(2, 0, 1))
    flipped = packed["data_samples"].gt_instances.bboxes.numpy()
    expected = raw["gt_bboxes"][:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [W, 0, W, 0]
    np.testing.assert_allclose(flipped, expected, atol=1e-4)


def _jpeg_label_ids(s: fixtures.CityscapesSample) -> None:
    bad_files.write_jpeg(s.paths[formats.LABEL_IDS_SUFFIX], bad_files.two_class_label_ids())


def _translucent_image(s: fixtures.CityscapesSample) -> None:
    alpha = np.full((H, W), 255, np.uint8)
    alpha[3, 5] = 128
    bad_files.write_rgba(s.paths[formats.IMAGE_SUFFIX], s.image, alpha)


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda s: fixtures.truncate(s.paths[formats.IMAGE_SUFFIX]), "cannot be decoded"),
        (
            lambda s: formats.write_png(
                s.paths[formats.DISPARITY_SUFFIX], (s.disparity // 256).astype(np.uint8)
            ),
            "expected uint16",
        ),
        (
            lambda s: formats.write_png(
                s.paths[formats.NORMALS_SUFFIX], np.zeros((H, W - 1, 3), np.uint16)
            ),
            f"size {H}x{W - 1} differs from the image's {H}x{W}",
        ),
        (
            lambda s: formats.write_png(
                s.paths[formats.LABEL_IDS_SUFFIX], np.full((H, W), 200, np.uint8)
            ),
            "label ids [200]",
        ),
        (
            lambda s: bad_files.write_jpeg(s.paths[formats.IMAGE_SUFFIX], s.image),
            "content is JPEG (lossy), not PNG as its name says",
        ),
        (_jpeg_label_ids, "content is JPEG (lossy), not PNG as its name says"),
        (_translucent_image, "RGBA with 1 non-opaque pixel(s)"),
        (
            lambda s: formats.write_png(
                s.paths[formats.NORMALS_SUFFIX], formats.encode_normals_png(0.9 * s.normals)
            ),
            "valid pixel(s) do not encode unit normals (|norm - 1| up to 0.1",
        ),
    ],
    ids=[
        "truncated-png",
        "8-bit-disparity",
        "size-mismatch",
        "unknown-label-id",
        "jpeg-image",
        "jpeg-label-ids",
        "translucent-rgba-image",
        "non-unit-normals",
    ],
)
def test_bad_files_raise_naming_the_file(tmp_path: Path, break_it, expected: str) -> None:
    (written,) = fixtures.write_cityscapes_tree(tmp_path, num=1)
    dataset = build(tmp_path)
    break_it(written)
    with pytest.raises(DataFileError) as info:
        dataset.get_raw_sample(0)
    assert expected in str(info.value)
    assert str(info.value).startswith(os.path.join(str(tmp_path), ""))


def test_jpeg_label_ids_would_decode_to_known_but_changed_ids(tmp_path: Path) -> None:
    """Why the reader checks the signature: the JPEG decodes, with no unknown id to catch."""
    path = str(tmp_path / "label.png")
    labels = bad_files.two_class_label_ids()
    bad_files.write_jpeg(path, labels)
    decoded = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert decoded.shape == labels.shape and decoded.dtype == np.uint8
    assert set(np.unique(decoded)) <= set(id2label) and (decoded != labels).any()


def test_opaque_rgba_image_reads_as_its_rgb(tmp_path: Path) -> None:
    (written,) = fixtures.write_cityscapes_tree(tmp_path, num=1)
    alpha = np.full((H, W), 255, np.uint8)
    bad_files.write_rgba(written.paths[formats.IMAGE_SUFFIX], written.image, alpha)
    np.testing.assert_array_equal(build(tmp_path).get_raw_sample(0)["img"], written.image)


def test_normals_tolerance_is_the_quantisation(tmp_path: Path) -> None:
    """Codes of unit normals, rounded or truncated, pass; 8-bit normals scaled up do not."""
    normals = fixtures.make_cityscapes_sample(0).normals
    valid = normals.any(axis=-1, keepdims=True)
    scaled = (normals + 1.0) / 2.0
    path = str(tmp_path / "n_normals.png")
    for code in (np.round(scaled * 65535), np.floor(scaled * 65535)):
        formats.write_png(path, np.where(valid, code, 0).astype(np.uint16))
        np.testing.assert_allclose(cityscapes.read_normals(path, (H, W)), normals, atol=1e-4)
    formats.write_png(path, np.where(valid, np.round(scaled * 255) * 257, 0).astype(np.uint16))
    with pytest.raises(DataFileError, match="do not encode unit normals"):
        cityscapes.read_normals(path, (H, W))


def test_all_zero_normals_read_as_no_valid_normals(tmp_path: Path) -> None:
    (written,) = fixtures.write_cityscapes_tree(tmp_path, num=1)
    formats.write_png(written.paths[formats.NORMALS_SUFFIX], np.zeros((H, W, 3), np.uint16))
    normals = build(tmp_path).get_raw_sample(0)["gt_normals_map"]
    assert normals.shape == (H, W, 3) and not normals.any()


@pytest.mark.parametrize(
    "edit, expected",
    [
        (dict(baseline="0.0"), "baseline must be finite and positive, found 0.0"),
        (dict(baseline="1e999"), "baseline must be finite and positive, found inf"),
        (dict(baseline="NaN"), "baseline must be finite and positive, found nan"),
        (dict(fx=True), "fx must be a number, found true"),
        (dict(fx="2262.52"), 'fx must be a number, found "2262.52"'),
        (dict(baseline="1e300"), "gives depths outside float32's range"),
    ],
    ids=["zero", "infinite", "nan", "boolean", "string", "overflowing-depth"],
)
def test_bad_camera_raises_naming_the_json(tmp_path: Path, edit: dict, expected: str) -> None:
    (written,) = fixtures.write_cityscapes_tree(tmp_path, num=1)
    camera = written.paths[formats.CAMERA_SUFFIX]
    dataset = build(tmp_path)
    bad_files.write_camera_text(camera, written.camera, **edit)
    with pytest.raises(DataFileError) as info:
        dataset.get_raw_sample(0)
    assert str(info.value).startswith(f"{camera}: ") and expected in str(info.value)


def test_disparity_without_camera_names_both(tmp_path: Path) -> None:
    (written,) = fixtures.write_cityscapes_tree(tmp_path, num=1)
    os.remove(written.paths[formats.CAMERA_SUFFIX])
    with pytest.raises(DataFileError) as info:
        build(tmp_path)
    assert written.paths[formats.DISPARITY_SUFFIX] in str(info.value)
    assert written.paths[formats.CAMERA_SUFFIX] in str(info.value)


def test_kind_missing_for_some_samples_lists_them(tmp_path: Path) -> None:
    written = fixtures.write_cityscapes_tree(tmp_path, num=8)
    for sample in written[1:]:
        os.remove(sample.paths[formats.NORMALS_SUFFIX])
    with pytest.raises(DataFileError) as info:
        build(tmp_path)
    message = str(info.value)
    assert "7 of 8" in message and "and 2 more" in message
    assert written[1].paths[formats.NORMALS_SUFFIX] in message


def test_missing_split_folder_is_named(tmp_path: Path) -> None:
    fixtures.write_cityscapes_tree(tmp_path, split="train", num=1)
    with pytest.raises(DataFileError, match=str(tmp_path / "leftImg8bit" / "val")):
        build(tmp_path, split="val")


def test_synthdrive_requires_normals(tmp_path: Path) -> None:
    kinds = tuple(k for k in fixtures.ALL_KINDS if k != formats.NORMALS_SUFFIX)
    fixtures.write_cityscapes_tree(tmp_path / "a", city="synthdrive", kinds=kinds)
    with pytest.raises(DataFileError, match="needs normals"):
        SynthDrive(data_root=str(tmp_path / "a"))
    fixtures.write_cityscapes_tree(tmp_path / "b", city="synthdrive")
    dataset = DATASETS.build(dict(type="SynthDrive", data_root=str(tmp_path / "b")))
    assert dataset.tasks == ("det", "seg", "depth", "normals") and len(dataset) == 2


def test_nyuv2_decoding(tmp_path: Path) -> None:
    written = fixtures.write_nyuv2_tree(tmp_path, num=1)[0]
    dataset = DATASETS.build(dict(type="NYUv2MTL", data_root=str(tmp_path), split="train"))
    sample = dataset.get_raw_sample(0)
    assert dataset.tasks == ("seg", "depth", "normals") and "gt_bboxes" not in sample
    assert sample["img"].dtype == np.uint8
    np.testing.assert_array_equal(sample["img"], np.floor(written["image"] * 255 + 0.5))
    expected_label = np.where(written["label"] == -1, 255, written["label"]).astype(np.int64)
    assert sample["gt_seg_map"].dtype == np.int64 and (sample["gt_seg_map"] == 255).any()
    np.testing.assert_array_equal(sample["gt_seg_map"], expected_label)
    assert sample["gt_depth_map"].shape == (H, W)
    np.testing.assert_array_equal(sample["gt_depth_map"], written["depth"][..., 0])
    normals = sample["gt_normals_map"]
    valid = written["normal"].any(axis=-1)
    np.testing.assert_allclose(np.linalg.norm(normals[valid], axis=-1), 1.0, rtol=1e-6)
    cosine = (normals * written["normal"]).sum(-1)[valid]
    np.testing.assert_allclose(cosine, np.linalg.norm(written["normal"][valid], axis=-1), 1e-5)
    assert (normals[~valid] == 0).all() and (~valid).any()
    assert len(dataset.metainfo["classes"]) == 13 == len(dataset.metainfo["palette"])


def test_nyuv2_sorts_numerically(tmp_path: Path) -> None:
    for i in (0, 2, 10, 1):
        os.makedirs(tmp_path / "val" / "image", exist_ok=True)
        np.save(tmp_path / "val" / "image" / f"{i}.npy", np.full((2, 3, 3), i / 10, np.float32))
    dataset = NYUv2MTL(data_root=str(tmp_path), split="val")
    assert dataset.tasks == ()
    assert [os.path.basename(dataset.get_raw_sample(i)["img_path"]) for i in range(4)] == [
        "0.npy", "1.npy", "2.npy", "10.npy"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "folder, array, expected",
    [
        ("label", np.full((H, W), 13.0, np.float32), "0..12 or -1, found [13.0]"),
        ("image", np.full((H, W, 3), 255.0, np.float32), "must lie in [0, 1]"),
        ("depth", np.zeros((H, W + 1, 1), np.float32), f"size {H}x{W + 1}"),
        ("normal", np.zeros((H, W), np.float32), "must be HxWx3"),
    ],
)
def test_nyuv2_bad_arrays_raise_naming_the_file(
    tmp_path: Path, folder: str, array: np.ndarray, expected: str
) -> None:
    fixtures.write_nyuv2_tree(tmp_path, num=1)
    path = str(tmp_path / "train" / folder / "0.npy")
    np.save(path, array)
    with pytest.raises(DataFileError) as info:
        NYUv2MTL(data_root=str(tmp_path)).get_raw_sample(0)
    assert str(info.value).startswith(path) and expected in str(info.value)


def test_nyuv2_truncated_npy_names_the_file(tmp_path: Path) -> None:
    fixtures.write_nyuv2_tree(tmp_path, num=1)
    path = str(tmp_path / "train" / "depth" / "0.npy")
    fixtures.truncate(path)
    with pytest.raises(DataFileError, match="truncated") as info:
        NYUv2MTL(data_root=str(tmp_path)).get_raw_sample(0)
    assert str(info.value).startswith(path)


@pytest.mark.parametrize("name", ["cityscapes", "synthdrive", "nyuv2"])
def test_dataset_configs_build_on_fixture_trees(tmp_path: Path, name: str) -> None:
    cfg = Config.fromfile(str(REPO / "configs" / "_base_" / "datasets" / f"{name}.py"))
    if name == "nyuv2":
        fixtures.write_nyuv2_tree(tmp_path, split="train")
        fixtures.write_nyuv2_tree(tmp_path, split="val")
    else:
        fixtures.write_cityscapes_tree(tmp_path, split="train")
        fixtures.write_cityscapes_tree(tmp_path, split="val")
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dataset_cfg = cfg[loader].dataset
        assert dataset_cfg.data_root == cfg.data_root
        pipeline = dataset_cfg.pipeline if HAS_TRANSFORMS else []
        dataset = DATASETS.build({**dataset_cfg, "data_root": str(tmp_path), "pipeline": pipeline})
        assert len(dataset) == 2
        if HAS_TRANSFORMS:
            packed = dataset[0]
            assert packed["inputs"].ndim == 3 and packed["inputs"].shape[0] == 3
