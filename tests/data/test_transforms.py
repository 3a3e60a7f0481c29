"""Each augmentation rule checked against geometry computed independently of the transforms."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from mmengine.runner import set_random_seed

from adperception.data import transforms as T
from adperception.data.structures import MTLDataSample
from adperception.registry import TRANSFORMS

H, W = 40, 60
CLASS = 13
ROWS, COLS = slice(10, 22), slice(15, 35)  # the painted rectangle: rows 10..21, cols 15..34
RECT_BOX = [15.0, 10.0, 35.0, 22.0]  # its box by the pixel-edge convention
NORMAL = np.array([0.6, 0.0, 0.8], dtype=np.float32)
ALL_TASKS = ("seg", "depth", "normals", "boxes")
MAP_KEYS = ("gt_seg_map", "gt_depth_map", "gt_normals_map")


def make_sample(tasks: tuple[str, ...] = ALL_TASKS, *, id_map: bool = False) -> dict:
    """40×60 sample: image channels are column, row and a mix; a class-13 rectangle with its
    box; depth a plane 2 + 0.25·row + 0.125·col (exact in float32); normals NORMAL outside the
    rectangle and straight up inside. With ``id_map`` the seg map holds 1000 + a pixel's flat
    index, which tells where each transformed pixel came from."""
    rows, cols = np.mgrid[0:H, 0:W]
    img = np.stack([cols, rows, (7 * rows + 3 * cols) % 256], axis=-1).astype(np.uint8)
    sample: dict = {"img": img, "img_path": "synthetic/0.png", "sample_idx": 0}
    sample["ori_shape"] = sample["img_shape"] = (H, W)
    if "seg" in tasks:
        seg = np.zeros((H, W), dtype=np.int64)
        seg[:3] = 255
        seg[ROWS, COLS] = CLASS
        sample["gt_seg_map"] = 1000 + rows * W + cols if id_map else seg
    if "depth" in tasks:
        sample["gt_depth_map"] = (2.0 + 0.25 * rows + 0.125 * cols).astype(np.float32)
    if "normals" in tasks:
        normals = np.broadcast_to(NORMAL, (H, W, 3)).copy()
        normals[ROWS, COLS] = [0.0, -1.0, 0.0]
        sample["gt_normals_map"] = normals
    if "boxes" in tasks:
        sample["gt_bboxes"] = np.array([RECT_BOX], dtype=np.float32)
        sample["gt_bboxes_labels"] = np.array([2], dtype=np.int64)
    return sample


def build(type_: str, **kwargs: object) -> T.BaseTransform:
    """Build in the adperception scope whatever default scope earlier tests left behind."""
    return TRANSFORMS.build(dict(type=type_, _scope_="adperception", **kwargs))


def run(transform: T.BaseTransform, sample: dict, seed: int = 0) -> dict:
    set_random_seed(seed)
    return transform(copy.deepcopy(sample))


def pixel_box(mask: np.ndarray) -> list[float]:
    """Pixel-edge box of the True pixels of ``mask``."""
    rows, cols = np.nonzero(mask)
    return [cols.min(), rows.min(), cols.max() + 1.0, rows.max() + 1.0]


def check_correspondence(before: dict, after: dict) -> None:
    """Through the id map, every output pixel's depth · s and normals equal the source pixel's
    (normals' x negated when flipped): nearest sampling, the depth rule and the flip rule."""
    ids = after["gt_seg_map"] - 1000
    assert ids.min() >= 0 and ids.max() < H * W
    src_rows, src_cols = ids // W, ids % W
    w_scale, h_scale = after["scale_factor"]
    s = np.sqrt(w_scale * h_scale)
    np.testing.assert_allclose(
        after["gt_depth_map"] * s, before["gt_depth_map"][src_rows, src_cols], rtol=1e-6
    )
    sign = np.array([-1.0 if after.get("flip", False) else 1.0, 1.0, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(
        after["gt_normals_map"], before["gt_normals_map"][src_rows, src_cols] * sign
    )


# Example arguments for every registered transform; a new one without an entry fails below.
EXAMPLES = {
    "Resize": dict(scale=(45, 45)),
    "RandomResize": dict(scale=(60, 40), ratio_range=(0.6, 1.7)),
    "RandomCrop": dict(crop_size=(32, 70)),
    "RandomFlip": dict(prob=1.0),
    "PhotoMetricDistortion": dict(prob=1.0),
    "PackMTLInputs": dict(),
}
OURS = sorted(name for name, cls in TRANSFORMS.module_dict.items() if cls.__module__ == T.__name__)
TASK_SETS = [ALL_TASKS, ("seg",), ()]


def test_every_registered_transform_has_an_example() -> None:
    assert set(OURS) == set(EXAMPLES)


@pytest.mark.parametrize("tasks", TASK_SETS, ids=["all", "seg-only", "image-only"])
@pytest.mark.parametrize("name", OURS)
def test_keys_preserved_and_shapes_agree(name: str, tasks: tuple[str, ...]) -> None:
    sample = make_sample(tasks)
    out = run(build(name, **EXAMPLES[name]), sample, seed=1)
    if name == "PackMTLInputs":
        data = out["data_samples"]
        h, w = out["inputs"].shape[1:]
        expected = {"seg": "gt_sem_seg", "depth": "gt_depth", "normals": "gt_normals"}
        for task, field in expected.items():
            assert (field in data) == (task in tasks)
            if task in tasks:
                assert getattr(data, field).shape == (h, w)
        assert ("gt_instances" in data) == ("boxes" in tasks)
        return
    assert set(sample) <= set(out)
    h, w = out["img"].shape[:2]
    assert out["img"].dtype == np.uint8 and out["img_shape"] == (h, w)
    for key in MAP_KEYS:
        assert (key in out) == (key in sample)
        if key in out:
            assert out[key].shape[:2] == (h, w) and out[key].dtype == sample[key].dtype
    if "gt_bboxes" in out:
        boxes, labels = out["gt_bboxes"], out["gt_bboxes_labels"]
        assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
        assert labels.dtype == np.int64


def test_flip_twice_is_identity() -> None:
    sample = make_sample()
    flip = build("RandomFlip", prob=1.0)
    out = flip(flip(copy.deepcopy(sample)))
    for key, value in sample.items():
        if key == "gt_bboxes":
            np.testing.assert_allclose(out[key], value, atol=1e-4)
        elif isinstance(value, np.ndarray):
            assert out[key].dtype == value.dtype
            np.testing.assert_array_equal(out[key], value)
        else:
            assert out[key] == value
    assert out["flip"] is False and out["flip_direction"] is None


def test_flip_mirrors_box_and_negates_normals_x() -> None:
    sample = make_sample()
    out = run(build("RandomFlip", prob=1.0), sample)
    np.testing.assert_array_equal(out["img"], sample["img"][:, ::-1])
    np.testing.assert_array_equal(out["gt_seg_map"], sample["gt_seg_map"][:, ::-1])
    np.testing.assert_array_equal(
        out["gt_normals_map"][0, 0], NORMAL * np.array([-1, 1, 1], dtype=np.float32)
    )
    x1, y1, x2, y2 = RECT_BOX
    np.testing.assert_allclose(out["gt_bboxes"], [[W - x2, y1, W - x1, y2]], atol=1e-4)
    np.testing.assert_allclose(out["gt_bboxes"][0], pixel_box(out["gt_seg_map"] == CLASS), 1e-4)
    assert out["flip"] is True and out["flip_direction"] == "horizontal"


def test_flip_with_prob_zero_changes_nothing() -> None:
    sample = make_sample()
    out = run(build("RandomFlip", prob=0.0), sample)
    for key in ("img", *MAP_KEYS, "gt_bboxes"):
        np.testing.assert_array_equal(out[key], sample[key])
    assert out["flip"] is False and out["flip_direction"] is None


def test_resize_scales_boxes_and_depth_and_records_scale_factor() -> None:
    sample = make_sample(id_map=True)
    out = run(build("Resize", scale=(30, 30)), sample)  # s = min(30/60, 30/40) = 0.5
    assert out["img"].shape == (20, 30, 3) and out["img_shape"] == (20, 30)
    assert out["scale_factor"] == (0.5, 0.5)
    np.testing.assert_allclose(out["gt_bboxes"], [np.array(RECT_BOX) * 0.5], atol=1e-4)
    check_correspondence(sample, out)

    out = build("Resize", scale=(90, 90))(out)  # s = min(90/30, 90/20) = 3
    assert out["img"].shape == (60, 90, 3) and out["scale_factor"] == (1.5, 1.5)
    np.testing.assert_allclose(
        out["gt_bboxes"], [np.array(RECT_BOX) * np.tile(out["scale_factor"], 2)], atol=1e-4
    )


@pytest.mark.parametrize("seed", range(6))
def test_random_resize_and_flip_keep_every_map_on_its_source_pixels(seed: int) -> None:
    sample = make_sample(id_map=True)
    resize = build("RandomResize", scale=(60, 40), ratio_range=(0.55, 1.9))
    out = run(lambda s: build("RandomFlip")(resize(s)), sample, seed=seed)
    w_scale, h_scale = out["scale_factor"]
    assert out["img"].shape[:2] == (round(H * h_scale), round(W * w_scale))
    assert abs(w_scale - h_scale) * max(H, W) < 1  # uniform up to one pixel of rounding
    check_correspondence(sample, out)


@pytest.mark.parametrize("seed", range(4))
def test_resized_maps_take_only_source_values(seed: int) -> None:
    sample = make_sample()
    out = run(build("RandomResize", scale=(60, 40), ratio_range=(0.55, 1.9)), sample, seed=seed)
    assert set(np.unique(out["gt_seg_map"])) <= {0, CLASS, 255}
    s = np.sqrt(np.prod(out["scale_factor"]))
    assert np.isin(
        np.round(out["gt_depth_map"] * s * 8), np.round(sample["gt_depth_map"] * 8)
    ).all()  # the plane's values are multiples of 1/8
    assert set(map(tuple, out["gt_normals_map"].reshape(-1, 3).tolist())) <= {
        tuple(NORMAL.tolist()),
        (0.0, -1.0, 0.0),
    }


def test_box_bounds_the_painted_rectangle_after_resize_and_crop() -> None:
    resize = build("RandomResize", scale=(60, 40), ratio_range=(0.7, 1.6))
    crop = build("RandomCrop", crop_size=(32, 48), min_visibility=0.25)
    survived = 0
    for seed in range(12):
        out = run(lambda s: crop(resize(s)), make_sample(), seed=seed)
        if len(out["gt_bboxes"]):
            survived += 1
            assert out["gt_bboxes_labels"].tolist() == [2]
            expected = pixel_box(out["gt_seg_map"] == CLASS)
            np.testing.assert_allclose(out["gt_bboxes"][0], expected, atol=1.0)
    assert survived >= 3


def test_crop_drops_boxes_below_min_visibility_with_their_labels() -> None:
    """The image's channel 0 is the column index, so the crop's x0 is read off the output."""
    boxes = np.array([[0, 5, 10, 15], [20, 0, 30, 40], [45, 30, 60, 40]], dtype=np.float32)
    sample = make_sample(("boxes",))
    sample["gt_bboxes"], sample["gt_bboxes_labels"] = boxes, np.array([4, 5, 6])
    crop_w, min_vis = 24, 0.45  # no visible fraction k/10 or k/15 ties with it
    outcomes = set()
    for seed in range(25):
        out = run(build("RandomCrop", crop_size=(H, crop_w), min_visibility=min_vis), sample, seed)
        x0 = int(out["img"][0, 0, 0])
        clipped = boxes.copy()
        clipped[:, [0, 2]] = np.clip(boxes[:, [0, 2]], x0, x0 + crop_w) - x0
        visible = (clipped[:, 2] - clipped[:, 0]) / (boxes[:, 2] - boxes[:, 0])
        keep = visible >= min_vis
        np.testing.assert_allclose(out["gt_bboxes"], clipped[keep], atol=1e-4)
        assert out["gt_bboxes_labels"].tolist() == np.array([4, 5, 6])[keep].tolist()
        outcomes.update(zip(keep.tolist(), (0 < visible) & (visible < 1), strict=True))
    assert {(True, False), (True, True), (False, True), (False, False)} <= outcomes


def test_crop_pads_small_samples_with_the_ignore_values() -> None:
    sample = make_sample()
    out = run(build("RandomCrop", crop_size=(48, 72)), sample)
    assert out["img"].shape == (48, 72, 3) and out["img_shape"] == out["pad_shape"] == (48, 72)
    inside = (slice(0, H), slice(0, W))
    # Black image, ignored labels, invalid depth and normals (docs/design.md §3).
    for key, pad in {"img": 0, "gt_seg_map": 255, "gt_depth_map": 0, "gt_normals_map": 0}.items():
        np.testing.assert_array_equal(out[key][inside], sample[key])
        assert (out[key][H:] == pad).all() and (out[key][:, W:] == pad).all()
    np.testing.assert_allclose(out["gt_bboxes"], sample["gt_bboxes"], atol=1e-4)


def test_photometric_changes_only_the_image() -> None:
    sample = make_sample()
    out = run(build("PhotoMetricDistortion", prob=1.0), sample)
    assert out["img"].dtype == np.uint8 and out["img"].shape == sample["img"].shape
    assert not np.array_equal(out["img"], sample["img"])
    for key, value in sample.items():
        if key != "img":
            assert type(out[key]) is type(value)
            np.testing.assert_array_equal(out[key], value, strict=True)
    untouched = run(build("PhotoMetricDistortion", prob=0.0), sample)
    np.testing.assert_array_equal(untouched["img"], sample["img"])


def pipeline() -> list[T.BaseTransform]:
    return [
        build("RandomResize", scale=(60, 40), ratio_range=(0.5, 2.0)),
        build("RandomCrop", crop_size=(32, 48)),
        build("RandomFlip"),
        build("PhotoMetricDistortion"),
        build("PackMTLInputs"),
    ]


def run_pipeline(seed: int) -> dict:
    set_random_seed(seed)
    results = make_sample()
    for transform in pipeline():
        results = transform(results)
    return results


def test_seed_makes_the_pipeline_reproducible() -> None:
    first, second, other = run_pipeline(7), run_pipeline(7), run_pipeline(8)
    assert torch.equal(first["inputs"], second["inputs"])
    a, b = first["data_samples"], second["data_samples"]
    assert a.metainfo == b.metainfo
    for field in ("gt_sem_seg", "gt_depth", "gt_normals"):
        assert torch.equal(getattr(a, field).data, getattr(b, field).data)
    assert torch.equal(a.gt_instances.bboxes, b.gt_instances.bboxes)
    assert not torch.equal(first["inputs"], other["inputs"])


def test_pack_shapes_dtypes_and_metainfo() -> None:
    sample = make_sample()
    out = build("PackMTLInputs")(copy.deepcopy(sample))
    inputs, data = out["inputs"], out["data_samples"]
    assert isinstance(data, MTLDataSample)
    assert inputs.dtype == torch.uint8 and inputs.shape == (3, H, W) and inputs.is_contiguous()
    assert torch.equal(inputs, torch.from_numpy(sample["img"]).permute(2, 0, 1))
    assert data.gt_sem_seg.data.dtype == torch.int64 and data.gt_sem_seg.data.shape == (1, H, W)
    assert torch.equal(data.gt_sem_seg.data[0], torch.from_numpy(sample["gt_seg_map"]))
    assert data.gt_depth.data.dtype == torch.float32 and data.gt_depth.data.shape == (1, H, W)
    assert data.gt_normals.data.dtype == torch.float32 and data.gt_normals.data.shape == (3, H, W)
    assert torch.equal(data.gt_normals.data[:, 0, 0], torch.from_numpy(NORMAL))
    assert data.gt_instances.bboxes.dtype == torch.float32
    assert data.gt_instances.bboxes.tolist() == [RECT_BOX]
    assert data.gt_instances.labels.dtype == torch.int64
    assert data.metainfo == {
        "img_path": "synthetic/0.png",
        "sample_idx": 0,
        "ori_shape": (H, W),
        "img_shape": (H, W),
        "pad_shape": (H, W),
        "scale_factor": (1.0, 1.0),
        "flip": False,
        "flip_direction": None,
    }


def test_pack_keeps_an_empty_box_field_when_every_box_was_dropped() -> None:
    sample = make_sample()
    sample["gt_bboxes"] = np.zeros((0, 4), dtype=np.float32)
    sample["gt_bboxes_labels"] = np.zeros(0, dtype=np.int64)
    data = build("PackMTLInputs")(sample)["data_samples"]
    assert data.gt_instances.bboxes.shape == (0, 4)
    assert data.gt_instances.bboxes.dtype == torch.float32
    assert data.gt_instances.labels.shape == (0,)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("gt_seg_map", np.zeros((H, W + 1), dtype=np.int64), "gt_seg_map is"),
        ("gt_bboxes", np.array([[10, 10, 5, 20]], dtype=np.float32), "empty or leave"),
        ("gt_bboxes", np.array([[10, 10, W + 5, 20]], dtype=np.float32), "empty or leave"),
        ("img", np.zeros((H, W, 3), dtype=np.float32), "must be uint8"),
    ],
)
def test_bad_samples_are_rejected_naming_the_file(key: str, value: object, message: str) -> None:
    sample = make_sample()
    sample[key] = value
    with pytest.raises(ValueError, match=f"synthetic/0.png: .*{message}"):
        build("RandomFlip", prob=1.0)(sample)


def test_crop_rejects_non_positive_min_visibility() -> None:
    with pytest.raises(ValueError, match="min_visibility"):
        build("RandomCrop", crop_size=(8, 8), min_visibility=0.0)
